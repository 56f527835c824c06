// bodypart-xr: OHIF 3 customization for the body-part results (no OHIF fork, no build).
// Append this file to the site's app-config.js, after `window.config = {...}` (docs/ohif.md):
//
//     cat bodypart-customization.js >> /usr/share/nginx/html/app-config.js
//
// It adds to the configuration's customizationService (array, object or phased form):
//   - viewport overlay, top left: Body Part Examined (0018,0015) of the image shown, and on the
//     app's corrected copies the AI origin of that value ("AI: corrected by <model> <version>");
//   - onBeforeSRAddMeasurement: the app's TID 1500 report holds one image-level measurement group
//     per image (TID 1501: finding sites, probabilities, "Source of Measurement" image), as
//     DICOM and IHE AI Results allow. OHIF 3 (up to 3.13 at least) expects each group to carry
//     image coordinates (SCOORD) and otherwise fails in _checkIfCanAddMeasurementsToDisplaySet
//     (TypeError reading 'ReferencedSOPSequence' of undefined: an empty black viewport). For such
//     groups this hook takes the source image from the group and outlines the whole image, labelled
//     with the result ("Body part (AI): Chest 97%"), so OHIF shows the image and the result.
//     Image-level groups of other makers' reports get the outline too, labelled with their
//     finding, finding sites and measurements; groups with coordinates are left to OHIF.
//     A site that has its own onBeforeSRAddMeasurement must call it from this one (docs/ohif.md).
// Checked with OHIF 3.13.2 by tests/test_ohif.py.
(function bodypartOhifCustomization(config) {
  'use strict';
  if (!config) {
    throw new Error('bodypart-customization.js: append it to app-config.js, after window.config is set');
  }
  const MANUFACTURER = 'bodypart-xr'; // Manufacturer (0008,0070) of the app's reports
  const CORRECTED = 'Body Part Examined and Anatomic Region corrected by ';
  const CODES = {
    imagingMeasurements: '126010',
    measurementGroup: '125007',
    trackingUid: '112040',
    finding: '121071',
    findingSite: '363698007',
    sourceOfMeasurement: '121112',
  };

  const list = seq => (seq == null ? [] : Array.isArray(seq) ? seq : [seq]);
  const first = seq => list(seq)[0];
  const codeOf = item => first(item && item.ConceptNameCodeSequence) || {};
  const named = (items, code) => items.filter(i => codeOf(i).CodeValue === code);

  /** The content items of the TID 1501 group of `trackingUid` in the SR series `seriesUid` and
   *  the SR instance holding it, or undefined. */
  function findGroup(services, seriesUid, trackingUid) {
    const displaySets = services.displaySetService.getDisplaySetsForSeries(seriesUid) || [];
    for (const ds of displaySets) {
      for (const instance of list(ds.instances).concat(list(ds.instance))) {
        for (const container of named(list(instance.ContentSequence), CODES.imagingMeasurements)) {
          for (const group of named(list(container.ContentSequence), CODES.measurementGroup)) {
            const items = list(group.ContentSequence);
            if (named(items, CODES.trackingUid).some(i => i.UID === trackingUid)) {
              return { items, instance };
            }
          }
        }
      }
    }
    return undefined;
  }

  /** Rows and Columns of the referenced image, from any display set OHIF has made. */
  function imageSize(services, sopInstanceUid) {
    for (const ds of services.displaySetService.getActiveDisplaySets()) {
      const instance = list(ds.instances).find(i => i && i.SOPInstanceUID === sopInstanceUid);
      if (instance && instance.Rows && instance.Columns) {
        return [Number(instance.Columns), Number(instance.Rows)];
      }
    }
    return undefined;
  }

  const meaning = item => (first(item.ConceptCodeSequence) || {}).CodeMeaning;

  /** The text box of one of the app's groups: "Body part (AI): Chest 97%" (each finding site
   *  with its probability) and that it is an AI result to be confirmed. */
  function resultLabels(items) {
    const probability = {};
    for (const num of items.filter(i => i.ValueType === 'NUM')) {
      const site = list(num.ContentSequence).find(i => codeOf(i).CodeValue === CODES.findingSite);
      const value = first(num.MeasuredValueSequence);
      if (site && value && value.NumericValue != null) {
        probability[first(site.ConceptCodeSequence).CodeValue] = Number(value.NumericValue);
      }
    }
    const shown = named(items, CODES.findingSite).map(i => {
      const p = probability[(first(i.ConceptCodeSequence) || {}).CodeValue];
      return p == null ? meaning(i) : `${meaning(i)} ${Math.round(100 * p)}%`;
    });
    return [
      { label: 'Body part (AI)', value: shown.join(', ') || 'none identified' },
      { label: 'AI result', value: 'to be confirmed' },
    ];
  }

  /** The text box of another maker's image-level group: its finding, finding sites, measurements. */
  function genericLabels(items) {
    const labels = named(items, CODES.finding).map(i => ({ label: 'Finding', value: meaning(i) }));
    labels.push(...named(items, CODES.findingSite).map(i => ({ label: 'Site', value: meaning(i) })));
    for (const num of items.filter(i => i.ValueType === 'NUM')) {
      const value = first(num.MeasuredValueSequence) || {};
      const unit = (first(value.MeasurementUnitsCodeSequence) || {}).CodeValue;
      labels.push({ label: codeOf(num).CodeMeaning, value: `${value.NumericValue ?? ''} ${unit && unit !== '1' ? unit : ''}`.trim() });
    }
    return labels;
  }

  function onBeforeSRAddMeasurement({ measurement, SeriesInstanceUID }) {
    const unresolved = coords => !coords || !coords.length || (coords[0].bodypartImageLevel && !coords[0].ReferencedSOPSequence);
    if (!measurement || !unresolved(measurement.coords)) {
      return measurement; // has image coordinates: OHIF's own handling
    }
    // Until the source image is found the measurement stays unloaded instead of failing.
    measurement.coords = [{ bodypartImageLevel: true, ValueType: 'SCOORD', GraphicType: 'POLYLINE', GraphicData: [] }];
    const services = window.services; // set by OHIF's cornerstone extension
    const group = services && findGroup(services, SeriesInstanceUID, measurement.TrackingUniqueIdentifier);
    const items = group && group.items;
    const source = items && first(first(named(items, CODES.sourceOfMeasurement).filter(i => i.ValueType === 'IMAGE')
      .map(i => i.ReferencedSOPSequence)));
    const size = source && imageSize(services, source.ReferencedSOPInstanceUID);
    if (!size) {
      return measurement;
    }
    const [w, h] = size;
    const m = Math.max(2, Math.round(0.01 * Math.min(w, h))); // just inside the image edge
    measurement.coords[0].GraphicData = [m, m, w - m, m, w - m, h - m, m, h - m, m, m];
    measurement.coords[0].ReferencedSOPSequence = {
      ReferencedSOPClassUID: source.ReferencedSOPClassUID,
      ReferencedSOPInstanceUID: source.ReferencedSOPInstanceUID,
      ReferencedFrameNumber: first(source.ReferencedFrameNumber),
    };
    measurement.labels = group.instance.Manufacturer === MANUFACTURER ? resultLabels(items) : genericLabels(items);
    measurement.graphicType = 'POLYLINE';
    return measurement;
  }

  const customizations = {
    'viewportOverlay.topLeft': {
      $push: [
        {
          id: 'BodyPartExamined',
          inheritsFrom: 'ohif.overlayItem',
          label: 'Body part:',
          title: 'Body Part Examined (0018,0015)',
          attribute: 'BodyPartExamined',
        },
        {
          id: 'BodyPartAIResult',
          inheritsFrom: 'ohif.overlayItem',
          label: 'AI:',
          title: 'Body Part Examined set by an AI (bodypart-xr), to be confirmed by a person',
          contentF: ({ instance }) => {
            const derivation = String((instance && instance.DerivationDescription) || '');
            return derivation.startsWith(CORRECTED) ? `corrected by ${derivation.slice(CORRECTED.length)}` : '';
          },
        },
      ],
    },
    onBeforeSRAddMeasurement,
  };

  const existing = config.customizationService;
  const phased = existing && !Array.isArray(existing) && ['requires', 'bootstrap', 'global', 'mode'].some(k => k in existing);
  if (phased) {
    existing.global = list(existing.global).concat([customizations]);
  } else if (Array.isArray(existing)) {
    existing.push(customizations);
  } else {
    config.customizationService = list(existing && Object.keys(existing).length ? existing : undefined).concat([customizations]);
  }
})(window.config);
