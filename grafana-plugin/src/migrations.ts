import { AGGREGATES, Aggregate, CURRENT_SCHEMA_VERSION, IotpipeQuery, LegacyQueryV0, StoredQuery } from './types';

/** True when the saved query predates the current schema and must be migrated before use. */
export function needsMigration(query: StoredQuery): boolean {
  return (query.schemaVersion ?? 0) < CURRENT_SCHEMA_VERSION;
}

/**
 * Brings a saved query to schemaVersion 1. Queries already at version 1 are returned as the same object,
 * so callers may compare by identity to see whether anything changed.
 *
 * v0 → v1: {device, metric, aggregate} becomes {devices: [device], metric, aggregates: [aggregate]},
 * queryType "timeseries", windowSeconds 0 (auto). An absent aggregate becomes ["mean"] (what v0 meant by it).
 * An unknown aggregate is kept as it is, so the backend reports it instead of the panel silently showing means.
 */
export function migrateQuery(query: StoredQuery): IotpipeQuery {
  if (!needsMigration(query)) {
    return query as IotpipeQuery;
  }
  const { device, aggregate, schemaVersion: _schemaVersion, ...rest } = query as LegacyQueryV0 & IotpipeQuery;
  const devices = rest.devices && rest.devices.length > 0 ? rest.devices : device ? [device] : [];
  let aggregates: Aggregate[] = rest.aggregates && rest.aggregates.length > 0 ? rest.aggregates : [];
  if (aggregates.length === 0 && aggregate) {
    aggregates = [aggregate.trim() as Aggregate];
  }
  return {
    ...rest,
    schemaVersion: CURRENT_SCHEMA_VERSION,
    queryType: rest.queryType ?? 'timeseries',
    devices,
    aggregates: aggregates.length > 0 ? aggregates : ['mean'],
    windowSeconds: rest.windowSeconds ?? 0,
  };
}

export function isAggregate(s: string): s is Aggregate {
  return (AGGREGATES as readonly string[]).includes(s);
}
