"""Helpers the tests and the benchmarks share (as numpy.testing and torch.testing are): DICOM twins
and broken files written into temporary folders, and the image probes of the shortcut checks.
Nothing in the app imports them."""
