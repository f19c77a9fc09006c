import React, { ChangeEvent, useEffect, useMemo, useState } from 'react';
import { QueryEditorProps, SelectableValue } from '@grafana/data';
import { InlineField, InlineFieldRow, InlineSwitch, Input, MultiSelect, RadioButtonGroup, Select } from '@grafana/ui';

import type { DataSource } from '../datasource';
import { migrateQuery, needsMigration } from '../migrations';
import {
  AGGREGATES,
  Aggregate,
  ALL_DEVICES,
  DEFAULT_QUERY,
  DeviceInfo,
  formatWindow,
  IotpipeDataSourceOptions,
  IotpipeQuery,
  QueryType,
  StoredQuery,
} from '../types';
import { useResource } from './useResource';

type Props = QueryEditorProps<DataSource, IotpipeQuery, IotpipeDataSourceOptions>;

const LABEL_WIDTH = 14;

export const QUERY_TYPE_OPTIONS: Array<SelectableValue<QueryType>> = [
  { label: 'Time series', value: 'timeseries', description: 'One series per device and aggregate' },
  { label: 'Summary', value: 'summary', description: 'One value per device over the whole range' },
];

const AGGREGATE_OPTIONS: Array<SelectableValue<Aggregate>> = AGGREGATES.map((a) => ({ label: a, value: a }));

const ALL_DEVICES_OPTION: SelectableValue<string> = {
  label: 'All devices (*)',
  value: ALL_DEVICES,
  description: 'Every registered device',
};

export function formatLabels(labels: Record<string, string> | undefined): string {
  return Object.entries(labels ?? {})
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
}

export function deviceOption(d: DeviceInfo): SelectableValue<string> {
  const labels = formatLabels(d.labels);
  return {
    label: d.name ? `${d.name} (${d.id})` : d.id,
    value: d.id,
    description: labels || undefined,
  };
}

/** The one explicit device a metric list can be narrowed to, if exactly one is selected. */
export function singleDevice(devices: string[] | undefined): string | undefined {
  if (!devices || devices.length !== 1) {
    return undefined;
  }
  const d = devices[0];
  return d === ALL_DEVICES || d.includes('$') ? undefined : d;
}

/** New device list after the picker changed: "*" excludes explicit devices and the other way round. */
export function pickDevices(previous: string[], picked: string[]): string[] {
  const added = picked.filter((d) => !previous.includes(d));
  if (added.includes(ALL_DEVICES)) {
    return [ALL_DEVICES];
  }
  return picked.filter((d) => d !== ALL_DEVICES);
}

export function QueryEditor({ query: rawQuery, onChange, onRunQuery, datasource }: Props) {
  // Saved v0 queries are migrated on load and the migrated model is written back once.
  const migrated = useMemo(() => migrateQuery(rawQuery as StoredQuery), [rawQuery]);
  useEffect(() => {
    if (needsMigration(rawQuery as StoredQuery)) {
      onChange(migrated);
    }
  }, [rawQuery, migrated, onChange]);
  const query: IotpipeQuery = { ...DEFAULT_QUERY, ...migrated };

  const devices = query.devices ?? [];
  const metricDevice = singleDevice(devices);
  const deviceList = useResource(() => datasource.getDevices(), [datasource]);
  const metricList = useResource(() => datasource.getMetrics(metricDevice), [datasource, metricDevice]);
  const windowList = useResource(() => datasource.getWindowSizes(), [datasource]);
  const variables = useMemo(() => datasource.getVariables(), [datasource]);

  const [labelSelector, setLabelSelector] = useState(query.labelSelector ?? '');
  const [unit, setUnit] = useState(query.unit ?? '');
  useEffect(() => setLabelSelector(query.labelSelector ?? ''), [query.labelSelector]);
  useEffect(() => setUnit(query.unit ?? ''), [query.unit]);

  const change = (patch: Partial<IotpipeQuery>, run = true) => {
    onChange({ ...query, ...patch });
    if (run) {
      onRunQuery();
    }
  };

  const variableOptions: Array<SelectableValue<string>> = variables.map((v) => ({
    label: v,
    value: v,
    description: 'Dashboard variable',
  }));

  const deviceOptions = useMemo(() => {
    const opts = [ALL_DEVICES_OPTION, ...variableOptions, ...(deviceList.value ?? []).map(deviceOption)];
    return withValues(opts, devices);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [deviceList.value, variables, devices.join('\u0000')]);

  const metricOptions = withValues(
    [...variableOptions, ...(metricList.value ?? []).map((m) => ({ label: m, value: m }))],
    query.metric ? [query.metric] : []
  );

  const windowOptions: Array<SelectableValue<number>> = [
    { label: 'Auto', value: 0, description: 'Coarsest stored window that fits the panel interval' },
    ...(windowList.value ?? []).map((s) => ({ label: formatWindow(s), value: s, description: `${s} seconds` })),
  ];
  const windowSeconds = query.windowSeconds ?? 0;
  if (!windowOptions.some((o) => o.value === windowSeconds)) {
    windowOptions.push({ label: `${formatWindow(windowSeconds)} (not stored)`, value: windowSeconds });
  }

  const isSummary = query.queryType === 'summary';

  return (
    <>
      <InlineFieldRow>
        <InlineField label="Query type" labelWidth={LABEL_WIDTH}>
          <RadioButtonGroup<QueryType>
            options={QUERY_TYPE_OPTIONS}
            value={query.queryType ?? 'timeseries'}
            onChange={(v) => change({ queryType: v })}
          />
        </InlineField>
        {isSummary && (
          <InlineField
            label="Fleet"
            tooltip="One row combining all selected devices instead of one row per device"
            htmlFor="iotpipe-fleet"
          >
            <InlineSwitch
              id="iotpipe-fleet"
              value={Boolean(query.fleet)}
              onChange={(e: React.FormEvent<HTMLInputElement>) => change({ fleet: e.currentTarget.checked })}
            />
          </InlineField>
        )}
      </InlineFieldRow>
      <InlineFieldRow>
        <InlineField
          label="Devices"
          labelWidth={LABEL_WIDTH}
          tooltip="Device ids, dashboard variables (multi-value variables expand to several devices), or * for all registered devices"
          invalid={Boolean(deviceList.error)}
          error={deviceList.error}
          grow
        >
          <MultiSelect<string>
            aria-label="Devices"
            inputId="iotpipe-devices"
            options={deviceOptions}
            value={devices}
            isLoading={deviceList.loading}
            allowCustomValue
            placeholder="Select devices"
            onChange={(items: Array<SelectableValue<string>>) =>
              change({ devices: pickDevices(devices, values(items)) })
            }
          />
        </InlineField>
      </InlineFieldRow>
      <InlineFieldRow>
        <InlineField
          label="Labels"
          labelWidth={LABEL_WIDTH}
          tooltip="Also include devices whose labels match, e.g. site=a,floor=2 (all must match)"
          htmlFor="iotpipe-label-selector"
          grow
        >
          <Input
            id="iotpipe-label-selector"
            value={labelSelector}
            placeholder="site=a,floor=2"
            onChange={(e: ChangeEvent<HTMLInputElement>) => setLabelSelector(e.target.value)}
            onBlur={() => {
              if (labelSelector !== (query.labelSelector ?? '')) {
                change({ labelSelector: labelSelector.trim() });
              }
            }}
          />
        </InlineField>
      </InlineFieldRow>
      <InlineFieldRow>
        <InlineField
          label="Metric"
          labelWidth={LABEL_WIDTH}
          invalid={Boolean(metricList.error)}
          error={metricList.error}
          tooltip={metricDevice ? `Metrics stored for ${metricDevice}` : 'Metrics stored for any device'}
        >
          <Select<string>
            aria-label="Metric"
            inputId="iotpipe-metric"
            options={metricOptions}
            value={query.metric ?? null}
            isLoading={metricList.loading}
            allowCustomValue
            placeholder="Select metric"
            width={28}
            onChange={(item: SelectableValue<string>) => change({ metric: item?.value ?? '' })}
          />
        </InlineField>
        <InlineField label="Aggregates" tooltip="Empty means mean">
          <MultiSelect<Aggregate>
            aria-label="Aggregates"
            inputId="iotpipe-aggregates"
            options={AGGREGATE_OPTIONS}
            value={query.aggregates ?? []}
            placeholder="mean"
            width={32}
            onChange={(items: Array<SelectableValue<Aggregate>>) => change({ aggregates: values(items) })}
          />
        </InlineField>
      </InlineFieldRow>
      <InlineFieldRow>
        <InlineField
          label="Window"
          labelWidth={LABEL_WIDTH}
          tooltip="Stored window size to read; Auto picks the coarsest one that fits the panel interval"
          invalid={Boolean(windowList.error)}
          error={windowList.error}
        >
          <Select<number>
            aria-label="Window"
            inputId="iotpipe-window"
            options={windowOptions}
            value={windowSeconds}
            isLoading={windowList.loading}
            width={20}
            onChange={(item: SelectableValue<number>) => change({ windowSeconds: item?.value ?? 0 })}
          />
        </InlineField>
        <InlineField label="Unit" tooltip="Grafana unit id; empty = from the metric name" htmlFor="iotpipe-unit">
          <Input
            id="iotpipe-unit"
            value={unit}
            placeholder="auto"
            width={20}
            onChange={(e: ChangeEvent<HTMLInputElement>) => setUnit(e.target.value)}
            onBlur={() => {
              if (unit !== (query.unit ?? '')) {
                change({ unit: unit.trim() });
              }
            }}
          />
        </InlineField>
      </InlineFieldRow>
    </>
  );
}

function values<T>(items: Array<SelectableValue<T>> | null | undefined): T[] {
  return (items ?? []).map((i) => i.value).filter((v): v is T => v !== undefined && v !== null);
}

/** Options plus an entry for every selected value that is not among them (typed or not loaded yet). */
function withValues(options: Array<SelectableValue<string>>, selected: string[]): Array<SelectableValue<string>> {
  const missing = selected.filter((v) => !options.some((o) => o.value === v));
  return [...options, ...missing.map((v) => ({ label: v, value: v }))];
}
