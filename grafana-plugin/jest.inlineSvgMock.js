// @grafana/ui's Icon loads its SVGs with react-inlinesvg, asynchronously over HTTP. In tests that only
// produces act() warnings, so render a plain <svg> at once (Grafana's own tests mock it the same way).
const React = require('react');

function InlineSVG({ src, title, innerRef, cacheRequests, preProcessor, loader, onLoad, onError, ...rest }) {
  return React.createElement('svg', { ...rest, ref: innerRef, 'data-src': src }, title ? React.createElement('title', null, title) : null);
}

module.exports = InlineSVG;
module.exports.default = InlineSVG;
module.exports.__esModule = true;
