import {
  CoreApp,
  DataQueryRequest,
  DataQueryResponse,
  DataSourceInstanceSettings,
  LegacyMetricFindQueryOptions,
  LiveChannelScope,
  MetricFindValue,
  ScopedVars,
  StreamingFrameAction,
} from '@grafana/data';
import {
  DataSourceWithBackend,
  getGrafanaLiveSrv,
  getTemplateSrv,
  GrafanaLiveSrv,
  LiveDataStreamOptions,
  TemplateSrv,
} from '@grafana/runtime';
import { catchError, EMPTY, from, map, merge, mergeMap, Observable } from 'rxjs';

import { errorMessage } from './errors';
import { migrateQuery } from './migrations';
import {
  ALL_DEVICES,
  DEFAULT_QUERY,
  DeviceInfo,
  IotpipeDataSourceOptions,
  IotpipeQuery,
  IotpipeVariableQuery,
  StoredQuery,
  windowChannelPath,
} from './types';
import { IotpipeVariableSupport, normalizeVariableQuery } from './variables';

/**
 * Live window streams a single query may open. Each one is a backend goroutine that polls the iotpipe API once a
 * second, so a selector that matches a large fleet streams only its first devices (sorted by id).
 */
export const MAX_STREAMS_PER_QUERY = 50;

/**
 * Longest range streamed live. Beyond it points are minutes apart and the dashboard's refresh keeps them current,
 * while a stream's first message would have to carry thousands of windows per device.
 */
export const MAX_LIVE_RANGE_MS = 24 * 3600 * 1000;

/**
 * Window size a live panel streams: the coarsest stored size not longer than the panel's step
 * (max(interval, range / max data points)), else the finest — the backend's rule for regular queries.
 */
export function streamWindow(
  sizes: readonly number[],
  intervalMs: number,
  rangeMs: number,
  maxDataPoints?: number
): number | undefined {
  const sorted = [...sizes].sort((a, b) => a - b);
  if (sorted.length === 0) {
    return undefined;
  }
  const stepSeconds = Math.max(intervalMs, maxDataPoints ? rangeMs / maxDataPoints : 0) / 1000;
  const fitting = sorted.filter((s) => s <= stepSeconds);
  return fitting.length > 0 ? fitting[fitting.length - 1] : sorted[0];
}

/** Separates the values of a multi-value variable while expanding `devices` (never part of a device id). */
const MULTI_VALUE_SEPARATOR = '\u001f';

export class DataSource extends DataSourceWithBackend<IotpipeQuery, IotpipeDataSourceOptions> {
  private windowSizes?: Promise<number[]>;

  constructor(
    instanceSettings: DataSourceInstanceSettings<IotpipeDataSourceOptions>,
    private readonly templateSrv: TemplateSrv = getTemplateSrv(),
    private readonly liveSrv: () => GrafanaLiveSrv = getGrafanaLiveSrv
  ) {
    super(instanceSettings);
    this.variables = new IotpipeVariableSupport(this);
  }

  getDefaultQuery(_app: CoreApp): Partial<IotpipeQuery> {
    return DEFAULT_QUERY;
  }

  /** Queries without a metric are incomplete (a new panel); Grafana does not send them. */
  filterQuery(query: IotpipeQuery): boolean {
    if (query.hide) {
      return false;
    }
    return Boolean(migrateQuery(query as StoredQuery).metric?.trim());
  }

  /**
   * Migrates a saved v0 query and expands dashboard variables: in `devices` every value of a multi-value variable
   * becomes its own device id (and "All" becomes either its custom all value, e.g. "*", or every value); in
   * labelSelector, metric and unit variables are replaced as text.
   */
  applyTemplateVariables(query: IotpipeQuery, scopedVars: ScopedVars): IotpipeQuery {
    const q = migrateQuery(query as StoredQuery);
    return {
      ...q,
      devices: this.expandDevices(q.devices ?? [], scopedVars),
      labelSelector: this.templateSrv.replace(q.labelSelector ?? '', scopedVars).trim(),
      metric: this.templateSrv.replace(q.metric ?? '', scopedVars).trim(),
      unit: this.templateSrv.replace(q.unit ?? '', scopedVars).trim(),
    };
  }

  private expandDevices(devices: string[], scopedVars: ScopedVars): string[] {
    const out: string[] = [];
    for (const device of devices) {
      const expanded = this.templateSrv.replace(device, scopedVars, (value: string | string[]) =>
        Array.isArray(value) ? value.join(MULTI_VALUE_SEPARATOR) : value
      );
      for (const part of expanded.split(MULTI_VALUE_SEPARATOR)) {
        const id = part.trim();
        if (id !== '' && !out.includes(id)) {
          out.push(id);
        }
      }
    }
    return out.includes(ALL_DEVICES) ? [ALL_DEVICES] : out;
  }

  /** Names of the dashboard variables, as "$name", for the editors' pickers. */
  getVariables(): string[] {
    return this.templateSrv.getVariables().map((v) => `$${v.name}`);
  }

  /**
   * A panel whose range ends now gets its time series from live window streams: the backend's first message on a
   * stream carries the whole range, later ones each newly stored window. Those queries are not also sent as
   * regular queries (their series would be drawn twice); summaries and everything else are. If the streams cannot
   * be set up, the regular query answers instead.
   */
  query(request: DataQueryRequest<IotpipeQuery>): Observable<DataQueryResponse> {
    if (!shouldStream(request)) {
      return super.query(request);
    }
    const live = request.targets
      .filter((t) => this.filterQuery(t))
      .map((t) => this.applyTemplateVariables(t, request.scopedVars))
      .filter((t) => (t.queryType ?? 'timeseries') === 'timeseries');
    if (live.length === 0) {
      return super.query(request);
    }
    const liveRefIds = new Set(live.map((t) => t.refId));
    const rest = request.targets.filter((t) => !liveRefIds.has(t.refId));
    const backend$ = rest.some((t) => this.filterQuery(t)) ? super.query({ ...request, targets: rest }) : EMPTY;
    const live$ = from(this.streamOptions(live, request)).pipe(
      mergeMap((streams) => merge(...streams.map((s) => this.subscribe(s.options, s.refId)))),
      catchError((err) => {
        console.warn(`iotpipe: live windows unavailable (${errorMessage(err)}); querying instead`);
        return super.query({ ...request, targets: request.targets.filter((t) => liveRefIds.has(t.refId)) });
      })
    );
    return merge(backend$, live$);
  }

  private subscribe(options: LiveDataStreamOptions, refId: string): Observable<DataQueryResponse> {
    return this.liveSrv()
      .getDataStream(options)
      .pipe(
        map((response) => {
          for (const frame of response.data ?? []) {
            if (frame && !frame.refId) {
              frame.refId = refId;
            }
          }
          return response;
        })
      );
  }

  /** One live subscription per (query, device); see the spec's "Live streaming". */
  async streamOptions(
    targets: IotpipeQuery[],
    request: DataQueryRequest<IotpipeQuery>
  ): Promise<Array<{ refId: string; options: LiveDataStreamOptions }>> {
    const rangeMs = Math.max(1000, request.range.to.valueOf() - request.range.from.valueOf());
    const out: Array<{ refId: string; options: LiveDataStreamOptions }> = [];
    for (const t of targets) {
      const windowSeconds =
        t.windowSeconds && t.windowSeconds > 0
          ? t.windowSeconds
          : streamWindow(await this.getWindowSizes(), request.intervalMs, rangeMs, request.maxDataPoints);
      if (!windowSeconds) {
        continue;
      }
      const devices = await this.resolveDevices(t);
      if (devices.length > MAX_STREAMS_PER_QUERY) {
        console.warn(
          `iotpipe: query ${t.refId} matches ${devices.length} devices; streaming live windows for the first ${MAX_STREAMS_PER_QUERY}`
        );
      }
      const maxLength = Math.min(100000, Math.ceil(rangeMs / (windowSeconds * 1000)) + 10);
      for (const device of devices.slice(0, MAX_STREAMS_PER_QUERY)) {
        out.push({
          refId: t.refId,
          options: {
            key: `${t.refId}/${device}`,
            addr: {
              scope: LiveChannelScope.DataSource,
              stream: this.uid, // the datasource uid; called "namespace" before Grafana 12
              path: windowChannelPath(device, t.metric ?? '', windowSeconds, t.aggregates ?? [], rangeMs / 1000),
            },
            buffer: { maxDelta: rangeMs, maxLength, action: StreamingFrameAction.Append },
          },
        });
      }
    }
    return out;
  }

  /** Device ids a (template-expanded) query stands for: explicit ids, plus "*" and labelSelector resolved. */
  async resolveDevices(query: IotpipeQuery): Promise<string[]> {
    const explicit = (query.devices ?? []).filter((d) => d !== ALL_DEVICES);
    const ids = new Set(explicit);
    if ((query.devices ?? []).includes(ALL_DEVICES)) {
      (await this.getDevices()).forEach((d) => ids.add(d.id));
    } else if (query.labelSelector) {
      (await this.getDevices(query.labelSelector)).forEach((d) => ids.add(d.id));
    }
    return Array.from(ids);
  }

  /** The `devices` resource: [{id, name, labels}], optionally only devices matching a label selector. */
  getDevices(labelSelector?: string): Promise<DeviceInfo[]> {
    const params = labelSelector ? { label: labelSelector } : undefined;
    return this.getResource<DeviceInfo[]>('devices', params).then((r) => r ?? []);
  }

  /** The `metrics` resource, for one device or for all. */
  getMetrics(device?: string): Promise<string[]> {
    const params = device ? { device } : undefined;
    return this.getResource<string[]>('metrics', params).then((r) => r ?? []);
  }

  /** The `windows` resource: stored window sizes in seconds, cached per datasource instance. */
  getWindowSizes(): Promise<number[]> {
    if (!this.windowSizes) {
      this.windowSizes = this.getResource<number[]>('windows').then(
        (r) => [...(r ?? [])].sort((a, b) => a - b),
        (err) => {
          this.windowSizes = undefined;
          throw err;
        }
      );
    }
    return this.windowSizes;
  }

  /**
   * Values of a template variable: {"type":"devices","labelSelector":""} → device ids (text = name, or the id when
   * unnamed); {"type":"metrics","device":""} → metric names.
   */
  async metricFindQuery(
    query: IotpipeVariableQuery | string,
    options?: LegacyMetricFindQueryOptions
  ): Promise<MetricFindValue[]> {
    const q = normalizeVariableQuery(query);
    const scopedVars = options?.scopedVars ?? {};
    if (q.type === 'metrics') {
      const device = this.templateSrv.replace(q.device ?? '', scopedVars).trim();
      const metrics = await this.getMetrics(device && device !== ALL_DEVICES ? device : undefined);
      return metrics.map((m) => ({ text: m, value: m }));
    }
    const selector = this.templateSrv.replace(q.labelSelector ?? '', scopedVars).trim();
    const devices = await this.getDevices(selector || undefined);
    return devices.map((d) => ({ text: d.name || d.id, value: d.id }));
  }
}

/**
 * Live windows only make sense for a range that ends now, and never for alerting or expressions: those are
 * evaluated by the backend alone.
 */
export function shouldStream(request: DataQueryRequest<IotpipeQuery>): boolean {
  const rangeMs = request.range ? request.range.to.valueOf() - request.range.from.valueOf() : 0;
  if (rangeMs > MAX_LIVE_RANGE_MS) {
    return false;
  }
  if (request.app === CoreApp.UnifiedAlerting || request.app === CoreApp.CloudAlerting) {
    return false;
  }
  if (request.targets.some((t) => t.datasource?.type === '__expr__' || t.datasource?.uid === '__expr__')) {
    return false;
  }
  const to = request.rangeRaw?.to ?? request.range?.raw?.to;
  return typeof to === 'string' && to.trim() === 'now';
}
