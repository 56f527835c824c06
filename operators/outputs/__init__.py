"""Output stage: results.json, DICOM SRs, corrected copies, the output folder, summaries."""
