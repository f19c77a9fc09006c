// Jest for the iotpipe datasource frontend (create-plugin style: swc transform, jsdom).
// Grafana's packages pull in ES-module-only dependencies; those are transformed too.
const esModules = [
  'd3',
  'd3-[a-z-]+',
  'internmap',
  'delaunator',
  'robust-predicates',
  'ol',
  'react-colorful',
  'rxjs',
  'uuid',
  'marked',
  'ramda',
  'react-calendar',
  'get-user-locale',
  'memoize',
  'mimic-function',
  '@wojtekmaj/date-utils',
];

const swc = [
  '@swc/jest',
  {
    sourceMaps: 'inline',
    jsc: {
      parser: { syntax: 'typescript', tsx: true, decorators: false, dynamicImport: true },
      transform: { react: { runtime: 'classic' } },
    },
  },
];

module.exports = {
  testEnvironment: 'jsdom',
  roots: ['<rootDir>/src'],
  testMatch: ['<rootDir>/src/**/*.{test,spec}.{ts,tsx}'],
  setupFilesAfterEnv: ['<rootDir>/jest.setup.js'],
  moduleNameMapper: {
    '\\.(css|scss|sass)$': '<rootDir>/jest.styleMock.js',
    '^react-inlinesvg$': '<rootDir>/jest.inlineSvgMock.js',
  },
  transform: {
    '^.+\\.(t|j)sx?$': swc,
    // d3-color and friends ship .mjs files (fix 2 in /work/shared/design.md).
    '^.+\\.mjs$': swc,
  },
  transformIgnorePatterns: [`/node_modules/(?!(${esModules.join('|')})/)`],
  watchPathIgnorePatterns: ['<rootDir>/node_modules', '<rootDir>/dist'],
};
