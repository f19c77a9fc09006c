// Production/dev build of the iotpipe datasource frontend, laid out like create-plugin's
// .config/webpack: AMD module.js with Grafana's shared libraries as externals.
// Plain CommonJS on purpose: a TypeScript webpack config needs ts-node, which fails under Node 20
// unless TS_NODE_COMPILER_OPTIONS is set (see /work/shared/design.md).
const path = require('path');
const CopyWebpackPlugin = require('copy-webpack-plugin');
const pkg = require('./package.json');
const pluginJson = require('./src/plugin.json');

const SOURCE_DIR = path.resolve(__dirname, 'src');
const DIST_DIR = path.resolve(__dirname, 'dist');

// Provided by Grafana at runtime (same list as create-plugin).
const externals = [
  'lodash',
  'jquery',
  'moment',
  'slate',
  'emotion',
  '@emotion/react',
  '@emotion/css',
  'prismjs',
  'slate-plain-serializer',
  '@grafana/slate-react',
  'react',
  'react-dom',
  'react-redux',
  'redux',
  'rxjs',
  'i18next',
  'react-router',
  'react-router-dom',
  'd3',
  'angular',
  /^@grafana\/ui/i,
  /^@grafana\/runtime/i,
  /^@grafana\/data/i,
  // Grafana serves these under the plugin's own path.
  ({ request }, callback) => {
    const prefix = 'grafana/';
    const stripPrefix = (value) => value.replace(prefix, '');
    if (request && request.indexOf(prefix) === 0) {
      return callback(undefined, stripPrefix(request));
    }
    callback();
  },
];

function today() {
  return new Date().toISOString().slice(0, 10);
}

// plugin.json carries %VERSION% and %TODAY% placeholders, filled here.
function fillPluginJson(content) {
  return content.toString().replace(/%VERSION%/g, pkg.version).replace(/%TODAY%/g, today());
}

module.exports = (env, argv) => {
  const production = argv.mode === 'production';
  return {
    mode: production ? 'production' : 'development',
    context: SOURCE_DIR,
    devtool: production ? 'source-map' : 'eval-source-map',
    entry: { module: './module.ts' },
    externals,
    output: {
      path: DIST_DIR,
      filename: '[name].js',
      library: { type: 'amd' },
      publicPath: `public/plugins/${pluginJson.id}/`,
      uniqueName: pluginJson.id,
      // Clean dist/ at the start of a build, but never the backend binaries that the Go build
      // puts there (also on dev rebuilds while a backend binary is in place).
      clean: { keep: /(^|[\\/])gpx_/ },
    },
    resolve: {
      extensions: ['.ts', '.tsx', '.js', '.jsx'],
      modules: [SOURCE_DIR, 'node_modules'],
    },
    module: {
      rules: [
        {
          test: /\.[tj]sx?$/,
          exclude: /node_modules/,
          use: {
            loader: 'swc-loader',
            options: {
              jsc: {
                target: 'es2015',
                loose: false,
                parser: { syntax: 'typescript', tsx: true, decorators: false, dynamicImport: true },
              },
            },
          },
        },
        {
          test: /\.(png|jpe?g|gif|svg)$/,
          type: 'asset/resource',
          generator: { filename: 'img/[name][ext]' },
        },
      ],
    },
    plugins: [
      new CopyWebpackPlugin({
        patterns: [
          { from: 'plugin.json', to: '.', transform: fillPluginJson },
          { from: 'img/**/*', to: '.' },
          { from: '../README.md', to: '.', noErrorOnMissing: true },
          { from: '../CHANGELOG.md', to: '.', noErrorOnMissing: true },
          { from: '../LICENSE', to: '.', noErrorOnMissing: true },
        ],
      }),
    ],
    performance: { hints: false },
    watchOptions: { ignored: ['**/node_modules/**', '**/dist/**'] },
  };
};
