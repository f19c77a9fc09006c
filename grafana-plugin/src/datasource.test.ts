import { CoreApp, DataQueryRequest, DataQueryResponse, dateTime, LiveChannelScope } from '@grafana/data';
import { DataSourceWithBackend, LiveDataStreamOptions } from '@grafana/runtime';
import { lastValueFrom, of, toArray } from 'rxjs';

import { DS_UID, newDataSource } from './__fixtures__/fakes';
import { MAX_STREAMS_PER_QUERY, shouldStream, streamWindow } from './datasource';
import { base64url, IotpipeQuery, windowChannelPath } from './types';

const VARS = {
  device: ['sim-001', 'sim-002'],
  single: 'sim-003',
  all: '*',
  site: 'a',
  metric: 'temperature',
  unit: 'celsius',
};

function q(patch: Partial<IotpipeQuery>): IotpipeQuery {
  return { refId: 'A', schemaVersion: 1, metric: 'temperature', ...patch };
}

describe('applyTemplateVariables', () => {
  it('expands a multi-value variable in devices to several ids, keeping literal ids, without duplicates', () => {
    const { ds } = newDataSource(VARS);
    const out = ds.applyTemplateVariables(q({ devices: ['$device', 'sim-004', 'sim-001'] }), {});
    expect(out.devices).toEqual(['sim-001', 'sim-002', 'sim-004']);
  });

  it('accepts ${var} and [[var]] and single-value variables', () => {
    const { ds } = newDataSource(VARS);
    expect(ds.applyTemplateVariables(q({ devices: ['${single}'] }), {}).devices).toEqual(['sim-003']);
    expect(ds.applyTemplateVariables(q({ devices: ['[[device]]'] }), {}).devices).toEqual(['sim-001', 'sim-002']);
  });

  it('collapses to ["*"] when a variable is "All" with the custom all value *', () => {
    const { ds } = newDataSource(VARS);
    expect(ds.applyTemplateVariables(q({ devices: ['$all', 'sim-001'] }), {}).devices).toEqual(['*']);
  });

  it('uses scoped variables of a repeated panel before dashboard variables', () => {
    const { ds } = newDataSource(VARS);
    const out = ds.applyTemplateVariables(q({ devices: ['$device'] }), {
      device: { text: 'sim-009', value: 'sim-009' },
    });
    expect(out.devices).toEqual(['sim-009']);
  });

  it('replaces variables in labelSelector, metric and unit', () => {
    const { ds } = newDataSource(VARS);
    const out = ds.applyTemplateVariables(
      q({ devices: [], labelSelector: 'site=$site,floor=2', metric: '$metric', unit: '$unit' }),
      {}
    );
    expect(out.labelSelector).toBe('site=a,floor=2');
    expect(out.metric).toBe('temperature');
    expect(out.unit).toBe('celsius');
  });

  it('leaves an unknown variable as text (the backend then reports the unknown device)', () => {
    const { ds } = newDataSource(VARS);
    expect(ds.applyTemplateVariables(q({ devices: ['$nope'] }), {}).devices).toEqual(['$nope']);
  });

  it('migrates a schemaVersion 0 query before expanding it', () => {
    const { ds } = newDataSource(VARS);
    const v0 = { refId: 'A', device: '$device', metric: '$metric', aggregate: 'max' } as unknown as IotpipeQuery;
    const out = ds.applyTemplateVariables(v0, {});
    expect(out).toMatchObject({
      schemaVersion: 1,
      queryType: 'timeseries',
      devices: ['sim-001', 'sim-002'],
      metric: 'temperature',
      aggregates: ['max'],
    });
    expect(out).not.toHaveProperty('device');
    expect(out).not.toHaveProperty('aggregate');
  });
});

describe('filterQuery', () => {
  it('skips queries without a metric and hidden queries', () => {
    const { ds } = newDataSource();
    expect(ds.filterQuery(q({ metric: '' }))).toBe(false);
    expect(ds.filterQuery(q({ metric: '  ' }))).toBe(false);
    expect(ds.filterQuery(q({ metric: undefined }))).toBe(false);
    expect(ds.filterQuery(q({ hide: true }))).toBe(false);
    expect(ds.filterQuery(q({}))).toBe(true);
    expect(ds.filterQuery({ refId: 'A', device: 'x', metric: 'm' } as unknown as IotpipeQuery)).toBe(true);
  });
});

describe('channel path', () => {
  it('matches the spec example', () => {
    expect(windowChannelPath('sim-001', 'temperature', 10, ['mean', 'max'])).toBe(
      'windows/c2ltLTAwMQ/dGVtcGVyYXR1cmU/10/mean.max'
    );
  });

  it('defaults to mean when no aggregate is chosen', () => {
    expect(windowChannelPath('a', 'b', 60, [])).toBe('windows/YQ/Yg/60/mean');
  });

  it.each(['sim-001', '>>>?', 'ü/ß?', 'a', 'ab', 'abc', 'device with spaces/and/slashes', '温度', '🌡️'])(
    'base64url(%p) is RFC 4648 §5 of the UTF-8 bytes, without padding',
    (s) => {
      const encoded = base64url(s);
      expect(encoded).toBe(Buffer.from(s, 'utf8').toString('base64url'));
      expect(encoded).toMatch(/^[A-Za-z0-9_-]*$/);
    }
  );
});

describe('metricFindQuery', () => {
  it('lists devices as {text: name or id, value: id}, filtered by an interpolated label selector', async () => {
    const { ds, getResource } = newDataSource(VARS);
    expect(await ds.metricFindQuery({ refId: 'v', type: 'devices', labelSelector: '' })).toEqual([
      { text: 'Kitchen', value: 'sim-001' },
      { text: 'sim-002', value: 'sim-002' },
      { text: 'Cellar', value: 'sim-003' },
    ]);
    expect(getResource).toHaveBeenLastCalledWith('devices', undefined);

    expect(await ds.metricFindQuery({ refId: 'v', type: 'devices', labelSelector: 'site=$site' })).toEqual([
      { text: 'Kitchen', value: 'sim-001' },
    ]);
    expect(getResource).toHaveBeenLastCalledWith('devices', { label: 'site=a' });
  });

  it('lists metrics of one (interpolated) device or of all devices', async () => {
    const { ds, getResource } = newDataSource(VARS);
    expect(await ds.metricFindQuery({ refId: 'v', type: 'metrics', device: '$single' })).toEqual([
      { text: 'pressure', value: 'pressure' },
    ]);
    expect(getResource).toHaveBeenLastCalledWith('metrics', { device: 'sim-003' });

    await ds.metricFindQuery({ refId: 'v', type: 'metrics', device: '' });
    expect(getResource).toHaveBeenLastCalledWith('metrics', undefined);
  });

  it('understands plain string queries from older variable editors', async () => {
    const { ds, getResource } = newDataSource(VARS);
    await ds.metricFindQuery('metrics(sim-003)');
    expect(getResource).toHaveBeenLastCalledWith('metrics', { device: 'sim-003' });
    await ds.metricFindQuery('devices(site=b)');
    expect(getResource).toHaveBeenLastCalledWith('devices', { label: 'site=b' });
  });

  it('is wired as the custom variable support', async () => {
    const { ds } = newDataSource(VARS);
    const support = ds.variables as unknown as {
      query: (r: DataQueryRequest) => import('rxjs').Observable<DataQueryResponse>;
    };
    const res = await lastValueFrom(
      support.query(request([{ refId: 'v', type: 'metrics', device: 'sim-003' } as never]) as DataQueryRequest)
    );
    expect(res.data).toEqual([{ text: 'pressure', value: 'pressure' }]);
  });
});

function request(
  targets: IotpipeQuery[],
  patch: Partial<DataQueryRequest<IotpipeQuery>> = {}
): DataQueryRequest<IotpipeQuery> {
  const to = dateTime('2026-01-01T12:00:00Z');
  const from = dateTime('2026-01-01T11:00:00Z');
  return {
    requestId: 'r1',
    interval: '10s',
    intervalMs: 10000,
    maxDataPoints: 360,
    range: { from, to, raw: { from: 'now-1h', to: 'now' } },
    rangeRaw: { from: 'now-1h', to: 'now' },
    scopedVars: {},
    targets,
    timezone: 'utc',
    app: CoreApp.Dashboard,
    startTime: 0,
    ...patch,
  };
}

describe('query with live windows', () => {
  const backendResponse: DataQueryResponse = { data: [{ name: 'from-backend', fields: [], length: 0 }] };
  let backendQuery: jest.SpyInstance;

  beforeEach(() => {
    backendQuery = jest.spyOn(DataSourceWithBackend.prototype, 'query').mockReturnValue(of(backendResponse));
  });
  afterEach(() => backendQuery.mockRestore());

  function setup() {
    const getDataStream = jest.fn((opts: LiveDataStreamOptions) =>
      of<DataQueryResponse>({ key: opts.key, data: [{ name: opts.addr.path, fields: [], length: 0 }] })
    );
    return { ...newDataSource(VARS, { getDataStream }), getDataStream };
  }

  it('subscribes per device to the window channel of the step-sized window, carrying the range, instead of querying', async () => {
    const { ds, getDataStream } = setup();
    const responses = await lastValueFrom(
      ds.query(request([q({ devices: ['$device'], aggregates: ['mean', 'max'], windowSeconds: 0 })])).pipe(toArray())
    );

    expect(backendQuery).not.toHaveBeenCalled();
    expect(getDataStream).toHaveBeenCalledTimes(2);
    const calls = getDataStream.mock.calls.map(([o]) => o);
    expect(calls.map((o) => o.addr)).toEqual([
      {
        scope: LiveChannelScope.DataSource,
        stream: DS_UID,
        path: `windows/${base64url('sim-001')}/${base64url('temperature')}/10/mean.max/3600`,
      },
      {
        scope: LiveChannelScope.DataSource,
        stream: DS_UID,
        path: `windows/${base64url('sim-002')}/${base64url('temperature')}/10/mean.max/3600`,
      },
    ]);
    expect(calls.map((o) => o.key)).toEqual(['A/sim-001', 'A/sim-002']);
    expect(calls[0].buffer?.maxDelta).toBe(3600 * 1000);

    expect(responses).not.toContain(backendResponse);
    const streamed = responses;
    expect(streamed).toHaveLength(2);
    // frames of a stream carry the refId of their query
    expect(streamed.every((r) => r.data[0].refId === 'A')).toBe(true);
  });

  it('uses an explicit window size and resolves * and label selectors through the devices resource', async () => {
    const { ds, getDataStream, getResource } = setup();
    await lastValueFrom(
      ds
        .query(
          request([
            q({ refId: 'A', devices: ['*'], windowSeconds: 60, aggregates: ['sum'] }),
            q({ refId: 'B', devices: [], labelSelector: 'site=$site', windowSeconds: 60 }),
          ])
        )
        .pipe(toArray())
    );
    expect(getResource).toHaveBeenCalledWith('devices', undefined);
    expect(getResource).toHaveBeenCalledWith('devices', { label: 'site=a' });
    expect(getResource).not.toHaveBeenCalledWith('windows', undefined);
    expect(getDataStream.mock.calls.map(([o]) => o.key)).toEqual(['A/sim-001', 'A/sim-002', 'A/sim-003', 'B/sim-001']);
    expect(getDataStream.mock.calls[0][0].addr.path).toBe(`windows/${base64url('sim-001')}/${base64url('temperature')}/60/sum/3600`);
  });

  it('caps the streams of one query', async () => {
    const { ds, getDataStream } = setup();
    const many = Array.from({ length: MAX_STREAMS_PER_QUERY + 5 }, (_, i) => `dev-${i}`);
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => {});
    await lastValueFrom(ds.query(request([q({ devices: many, windowSeconds: 10 })])).pipe(toArray()));
    expect(getDataStream).toHaveBeenCalledTimes(MAX_STREAMS_PER_QUERY);
    expect(warn).toHaveBeenCalled();
    warn.mockRestore();
  });

  it('does not stream summaries, queries without a metric, or ranges that do not end now', async () => {
    const { ds, getDataStream } = setup();
    await lastValueFrom(ds.query(request([q({ devices: ['sim-001'], queryType: 'summary' })])).pipe(toArray()));
    await lastValueFrom(ds.query(request([q({ devices: ['sim-001'], metric: '' })])).pipe(toArray()));
    await lastValueFrom(
      ds
        .query(request([q({ devices: ['sim-001'] })], { rangeRaw: { from: 'now-2h', to: 'now-1h' } }))
        .pipe(toArray())
    );
    expect(getDataStream).not.toHaveBeenCalled();
    expect(backendQuery).toHaveBeenCalledTimes(3);
  });

  it('falls back to the regular query when the streams cannot be set up', async () => {
    const { ds, getResource } = setup();
    getResource.mockImplementation((() => Promise.reject({ status: 401, data: { error: 'token rejected' } })) as never);
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => {});
    const responses = await lastValueFrom(ds.query(request([q({ devices: ['sim-001'] })])).pipe(toArray()));
    expect(responses).toEqual([backendResponse]);
    expect(backendQuery).toHaveBeenCalledTimes(1);
    expect(backendQuery.mock.calls[0][0].targets.map((t: IotpipeQuery) => t.refId)).toEqual(['A']);
    expect(warn.mock.calls[0][0]).toMatch(/token rejected/);
    warn.mockRestore();
  });

  it('queries summaries regularly next to streamed time series', async () => {
    const { ds, getDataStream } = setup();
    const responses = await lastValueFrom(
      ds
        .query(
          request([
            q({ refId: 'A', devices: ['sim-001'], windowSeconds: 10 }),
            q({ refId: 'S', devices: ['sim-001'], queryType: 'summary', fleet: true }),
          ])
        )
        .pipe(toArray())
    );
    expect(backendQuery).toHaveBeenCalledTimes(1);
    expect(backendQuery.mock.calls[0][0].targets.map((t: IotpipeQuery) => t.refId)).toEqual(['S']);
    expect(getDataStream).toHaveBeenCalledTimes(1);
    expect(responses).toContain(backendResponse);
  });
});

describe('shouldStream', () => {
  const base = request([q({ devices: ['sim-001'] })]);
  it('streams dashboards and Explore when the range ends now', () => {
    expect(shouldStream(base)).toBe(true);
    expect(shouldStream({ ...base, app: CoreApp.Explore })).toBe(true);
  });
  it('never streams for alerting or expressions', () => {
    expect(shouldStream({ ...base, app: CoreApp.UnifiedAlerting })).toBe(false);
    expect(shouldStream({ ...base, app: CoreApp.CloudAlerting })).toBe(false);
    expect(
      shouldStream({ ...base, targets: [...base.targets, { refId: 'B', datasource: { type: '__expr__', uid: '__expr__' } }] })
    ).toBe(false);
  });
  it('does not stream ranges longer than a day', () => {
    const to = dateTime('2026-01-02T12:00:00Z');
    const from = dateTime('2026-01-01T11:59:00Z');
    expect(shouldStream({ ...base, range: { from, to, raw: { from: 'now-1d1m', to: 'now' } } })).toBe(false);
  });
  it('does not stream absolute ranges', () => {
    const to = dateTime('2026-01-01T12:00:00Z');
    expect(shouldStream({ ...base, rangeRaw: { from: to, to } })).toBe(false);
  });
});

describe('streamWindow', () => {
  it.each([
    // sizes, intervalMs, rangeMs, maxDataPoints, want
    [[10, 60, 3600], 1000, 5 * 60e3, 1000, 10], // 5 min: finer than any window → finest
    [[10, 60, 3600], 10e3, 3600e3, 360, 10],
    [[10, 60, 3600], 20e3, 6 * 3600e3, 1000, 10], // step 21.6 s
    [[10, 60, 3600], 60e3, 24 * 3600e3, 1000, 60], // step 86.4 s
    [[3600, 10, 60], 60e3, 24 * 3600e3, 1000, 60], // unsorted sizes
    [[10, 60, 3600], 3600e3, 24 * 3600e3, 1000, 3600],
    [[], 10e3, 3600e3, 1000, undefined],
  ])('sizes %j interval %d range %d points %d → %s', (sizes, intervalMs, rangeMs, points, want) => {
    expect(streamWindow(sizes as number[], intervalMs as number, rangeMs as number, points as number)).toBe(want);
  });
});
