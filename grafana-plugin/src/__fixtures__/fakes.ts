import { DataSourceInstanceSettings, ScopedVars, TypedVariableModel } from '@grafana/data';
import { GrafanaLiveSrv, TemplateSrv } from '@grafana/runtime';

import { DataSource } from '../datasource';
import { DeviceInfo, IotpipeDataSourceOptions } from '../types';

export const DS_UID = 'iotpipe-uid';

export const SETTINGS = {
  id: 7,
  uid: DS_UID,
  type: 'iotpipe-iotpipe-datasource',
  name: 'iotpipe',
  access: 'proxy',
  readOnly: false,
  jsonData: { url: 'http://iotpipe:8080' },
  meta: { id: 'iotpipe-iotpipe-datasource', name: 'iotpipe', type: 'datasource', info: {}, module: '', baseUrl: '' },
} as unknown as DataSourceInstanceSettings<IotpipeDataSourceOptions>;

/**
 * Dashboard variables as Grafana's TemplateSrv sees them: a multi-value variable holds an array, the "All"
 * value of a variable with a custom all value holds that value.
 */
export type Vars = Record<string, string | string[]>;

/**
 * A TemplateSrv that follows Grafana's rules closely enough for the datasource: $name, ${name} and [[name]];
 * scopedVars win over dashboard variables; a format function gets the raw value (array for multi-value);
 * without one, multi-values are joined glob style ({a,b}); unknown variables stay as they are.
 */
export class FakeTemplateSrv implements TemplateSrv {
  constructor(private readonly vars: Vars = {}) {}

  getVariables(): TypedVariableModel[] {
    return Object.keys(this.vars).map((name) => ({ name, type: 'custom' }) as unknown as TypedVariableModel);
  }

  replace(target?: string, scopedVars?: ScopedVars, format?: string | Function): string {
    if (!target) {
      return target ?? '';
    }
    return target.replace(/\$(\w+)|\$\{(\w+)\}|\[\[(\w+)\]\]/g, (match, a, b, c) => {
      const name = a ?? b ?? c;
      const scoped = scopedVars?.[name];
      const value = scoped ? (scoped.value as string | string[]) : this.vars[name];
      if (value === undefined) {
        return match;
      }
      if (typeof format === 'function') {
        return format(value);
      }
      return Array.isArray(value) ? `{${value.join(',')}}` : value;
    });
  }

  containsTemplate(target?: string): boolean {
    return Boolean(target && /\$\w+|\$\{\w+\}|\[\[\w+\]\]/.test(target));
  }

  updateTimeRange(): void {}
}

export const DEVICES: DeviceInfo[] = [
  { id: 'sim-001', name: 'Kitchen', labels: { site: 'a', floor: '2' } },
  { id: 'sim-002', name: '', labels: { site: 'b' } },
  { id: 'sim-003', name: 'Cellar', labels: {} },
];

/** Answers for getResource(path, params), like the backend's resources would. */
export function fakeResources(path: string, params?: Record<string, unknown>): Promise<unknown> {
  switch (path) {
    case 'devices': {
      const label = params?.label as string | undefined;
      if (!label) {
        return Promise.resolve(DEVICES);
      }
      const want = label.split(',').map((kv) => kv.split('='));
      return Promise.resolve(DEVICES.filter((d) => want.every(([k, v]) => d.labels[k] === v)));
    }
    case 'metrics':
      return Promise.resolve(params?.device === 'sim-003' ? ['pressure'] : ['humidity', 'temperature']);
    case 'windows':
      return Promise.resolve([60, 10]);
    default:
      return Promise.reject({ status: 404, data: { error: `unknown resource ${path}` } });
  }
}

export function newDataSource(vars: Vars = {}, live?: Partial<GrafanaLiveSrv>) {
  const templateSrv = new FakeTemplateSrv(vars);
  const liveSrv = { getDataStream: jest.fn(), ...live } as unknown as GrafanaLiveSrv;
  const ds = new DataSource(SETTINGS, templateSrv, () => liveSrv);
  const getResource = jest.spyOn(ds, 'getResource').mockImplementation(fakeResources as never);
  return { ds, templateSrv, liveSrv, getResource };
}
