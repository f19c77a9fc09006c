import { DataSourceJsonData } from '@grafana/data';
import { DataQuery } from '@grafana/schema';

/** Version of the saved query model this frontend writes (see /tmp/spec/plugin-spec.md "Query model"). */
export const CURRENT_SCHEMA_VERSION = 1;

export type QueryType = 'timeseries' | 'summary';

export const AGGREGATES = ['mean', 'max', 'min', 'count', 'sum'] as const;
export type Aggregate = (typeof AGGREGATES)[number];

/** Device id that stands for every registered device. */
export const ALL_DEVICES = '*';

/** One Grafana query against iotpipe, schemaVersion 1. The Go backend reads the same JSON. */
export interface IotpipeQuery extends DataQuery {
  schemaVersion?: number;
  queryType?: QueryType;
  /** Explicit device ids, template variables ("$device"), or ["*"] for all registered devices. */
  devices?: string[];
  /** Devices whose labels match, e.g. "site=a,floor=2" (ANDed); added to `devices`. */
  labelSelector?: string;
  metric?: string;
  /** Subset of AGGREGATES; empty means ["mean"]. */
  aggregates?: Aggregate[];
  /** Stored window size to read; 0 = auto (coarsest stored window that fits the step). */
  windowSeconds?: number;
  /** Summary only: one row over all selected devices. */
  fleet?: boolean;
  /** Grafana unit id that overrides the unit guessed from the metric name. */
  unit?: string;
}

/** Saved queries from before the contract (schemaVersion 0 / absent). */
export interface LegacyQueryV0 extends DataQuery {
  schemaVersion?: 0;
  device?: string;
  metric?: string;
  aggregate?: string;
}

/** What a saved query may look like when Grafana hands it to us. */
export type StoredQuery = IotpipeQuery | LegacyQueryV0;

export const DEFAULT_QUERY: Partial<IotpipeQuery> = {
  schemaVersion: CURRENT_SCHEMA_VERSION,
  queryType: 'timeseries',
  devices: [],
  labelSelector: '',
  aggregates: ['mean'],
  windowSeconds: 0,
  fleet: false,
  unit: '',
};

/** Datasource settings (jsonData). */
export interface IotpipeDataSourceOptions extends DataSourceJsonData {
  /** Base URL of the iotpipe HTTP API, without /api, e.g. http://iotpipe:8080. */
  url?: string;
}

/** Datasource secrets (secureJsonData); never sent back to the browser once saved. */
export interface IotpipeSecureJsonData {
  token?: string;
  /** PEM of the CA that signed the iotpipe API's certificate (https with a private CA); the name Grafana's HTTP datasources use. */
  tlsCACert?: string;
}

/** A device as the `devices` resource returns it. */
export interface DeviceInfo {
  id: string;
  name: string;
  labels: Record<string, string>;
}

export type VariableQueryType = 'devices' | 'metrics';

/** Query of a template variable backed by this datasource. */
export interface IotpipeVariableQuery extends DataQuery {
  type: VariableQueryType;
  /** type "devices": only devices whose labels match. */
  labelSelector?: string;
  /** type "metrics": only metrics stored for this device. */
  device?: string;
}

export const DEFAULT_VARIABLE_QUERY: Omit<IotpipeVariableQuery, 'refId'> = {
  type: 'devices',
  labelSelector: '',
};

/** base64url (RFC 4648 §5) of the UTF-8 bytes of s, without padding. */
export function base64url(s: string): string {
  let binary = '';
  for (const byte of utf8(s)) {
    binary += String.fromCharCode(byte);
  }
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function utf8(s: string): number[] {
  const out: number[] = [];
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (cp < 0x80) {
      out.push(cp);
    } else if (cp < 0x800) {
      out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    } else {
      out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    }
  }
  return out;
}

/**
 * Grafana Live path of the window stream for one device:
 * windows/<device b64url>/<metric b64url>/<windowSeconds>/<agg1.agg2>.
 */
export function windowChannelPath(
  device: string,
  metric: string,
  windowSeconds: number,
  aggregates: readonly string[],
  historySeconds = 0
): string {
  const aggs = aggregates.length > 0 ? aggregates : ['mean'];
  const path = `windows/${base64url(device)}/${base64url(metric)}/${windowSeconds}/${aggs.join('.')}`;
  // The backend's first message covers this much history, so a live panel needs no separate query.
  return historySeconds > 0 ? `${path}/${Math.ceil(historySeconds)}` : path;
}

/** "10s", "1m", "1h30m" for a window size in seconds. */
export function formatWindow(seconds: number): string {
  if (seconds <= 0) {
    return 'auto';
  }
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return [h ? `${h}h` : '', m ? `${m}m` : '', s ? `${s}s` : ''].join('');
}
