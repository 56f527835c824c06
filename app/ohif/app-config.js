/** @type {AppTypes.Config} */
// bodypart-xr: an OHIF 3 app-config.js for a viewer served on the same origin as an Orthanc
// DICOMweb server (/dicom-web, WADO-URI at /wado), e.g. behind one reverse proxy. Sites that have
// their own app-config.js keep it and append bodypart-customization.js to it (docs/ohif.md).
// Checked with OHIF 3.13.2 (npm @ohif/app) by tests/test_ohif.py.
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc DICOMweb',
        name: 'orthanc',
        qidoRoot: `${window.location.origin}/dicom-web`,
        wadoRoot: `${window.location.origin}/dicom-web`,
        wadoUriRoot: `${window.location.origin}/wado`,
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
