import { CustomVariableSupport, DataQueryRequest, DataQueryResponse } from '@grafana/data';
import { from, map, Observable } from 'rxjs';

import { VariableQueryEditor } from './components/VariableQueryEditor';
import type { DataSource } from './datasource';
import { DEFAULT_VARIABLE_QUERY, IotpipeVariableQuery } from './types';

/** Template variables backed by the `devices` and `metrics` resources. */
export class IotpipeVariableSupport extends CustomVariableSupport<DataSource, IotpipeVariableQuery> {
  editor = VariableQueryEditor;

  constructor(private readonly datasource: DataSource) {
    super();
  }

  query(request: DataQueryRequest<IotpipeVariableQuery>): Observable<DataQueryResponse> {
    return from(
      this.datasource.metricFindQuery(request.targets[0], { scopedVars: request.scopedVars, range: request.range })
    ).pipe(map((data) => ({ data })));
  }
}

/**
 * Accepts what a dashboard may have saved: the JSON query, nothing yet, or a plain string ("devices",
 * "metrics", "metrics(sim-001)", "devices(site=a)") as typed into older variable editors.
 */
export function normalizeVariableQuery(query: unknown): IotpipeVariableQuery {
  if (typeof query === 'string') {
    const m = query.trim().match(/^(devices|metrics)\s*(?:\((.*)\))?$/i);
    if (!m) {
      return { refId: 'variable', ...DEFAULT_VARIABLE_QUERY };
    }
    const arg = (m[2] ?? '').trim();
    return m[1].toLowerCase() === 'metrics'
      ? { refId: 'variable', type: 'metrics', device: arg }
      : { refId: 'variable', type: 'devices', labelSelector: arg };
  }
  const q = (query ?? {}) as Partial<IotpipeVariableQuery>;
  const type = q.type === 'metrics' ? 'metrics' : 'devices';
  return type === 'metrics'
    ? { ...q, refId: q.refId ?? 'variable', type, device: q.device ?? '' }
    : { ...q, refId: q.refId ?? 'variable', type, labelSelector: q.labelSelector ?? '' };
}
