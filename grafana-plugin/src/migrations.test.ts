import { migrateQuery, needsMigration } from './migrations';
import { IotpipeQuery, LegacyQueryV0 } from './types';

describe('migrateQuery', () => {
  it('turns a schemaVersion 0 query into the v1 model', () => {
    const v0: LegacyQueryV0 = { refId: 'A', device: 'sim-001', metric: 'temperature', aggregate: 'max' };
    expect(needsMigration(v0)).toBe(true);
    const v1 = migrateQuery(v0);
    expect(v1).toEqual({
      refId: 'A',
      schemaVersion: 1,
      queryType: 'timeseries',
      devices: ['sim-001'],
      metric: 'temperature',
      aggregates: ['max'],
      windowSeconds: 0,
    });
    expect(v1).not.toHaveProperty('device');
    expect(v1).not.toHaveProperty('aggregate');
    expect(needsMigration(v1)).toBe(false);
  });

  it('keeps Grafana fields such as datasource, hide and interval settings', () => {
    const v0 = {
      refId: 'B',
      hide: true,
      datasource: { type: 'iotpipe-iotpipe-datasource', uid: 'x' },
      device: 'd',
      metric: 'm',
    } as LegacyQueryV0;
    const v1 = migrateQuery(v0);
    expect(v1.hide).toBe(true);
    expect(v1.datasource).toEqual({ type: 'iotpipe-iotpipe-datasource', uid: 'x' });
  });

  it('defaults a missing aggregate to mean and a missing device to none', () => {
    const v1 = migrateQuery({ refId: 'A', metric: 'humidity' });
    expect(v1.aggregates).toEqual(['mean']);
    expect(v1.devices).toEqual([]);
  });

  it('keeps an unknown v0 aggregate so the backend reports it', () => {
    expect(migrateQuery({ refId: 'A', device: 'd', metric: 'm', aggregate: 'p99' }).aggregates).toEqual(['p99']);
  });

  it('returns a v1 query unchanged, as the same object', () => {
    const q: IotpipeQuery = { refId: 'A', schemaVersion: 1, devices: [], metric: 'temperature', aggregates: [] };
    expect(migrateQuery(q)).toBe(q);
  });
});
