import React, { ChangeEvent, useEffect, useState } from 'react';
import { QueryEditorProps, SelectableValue } from '@grafana/data';
import { InlineField, InlineFieldRow, Input, RadioButtonGroup } from '@grafana/ui';

import type { DataSource } from '../datasource';
import { IotpipeDataSourceOptions, IotpipeQuery, IotpipeVariableQuery, VariableQueryType } from '../types';
import { normalizeVariableQuery } from '../variables';

type Props = QueryEditorProps<DataSource, IotpipeQuery, IotpipeDataSourceOptions, IotpipeVariableQuery>;

const TYPE_OPTIONS: Array<SelectableValue<VariableQueryType>> = [
  { label: 'Devices', value: 'devices', description: 'Device ids (shown by name)' },
  { label: 'Metrics', value: 'metrics', description: 'Metric names' },
];

export function VariableQueryEditor({ query: rawQuery, onChange }: Props) {
  const query = normalizeVariableQuery(rawQuery);
  const [labelSelector, setLabelSelector] = useState(query.labelSelector ?? '');
  const [device, setDevice] = useState(query.device ?? '');
  useEffect(() => setLabelSelector(query.labelSelector ?? ''), [query.labelSelector]);
  useEffect(() => setDevice(query.device ?? ''), [query.device]);

  const onTypeChange = (type: VariableQueryType) => {
    onChange(
      type === 'metrics'
        ? { refId: query.refId, type, device: device.trim() }
        : { refId: query.refId, type, labelSelector: labelSelector.trim() }
    );
  };

  return (
    <>
      <InlineFieldRow>
        <InlineField label="Values" labelWidth={16}>
          <RadioButtonGroup<VariableQueryType> options={TYPE_OPTIONS} value={query.type} onChange={onTypeChange} />
        </InlineField>
      </InlineFieldRow>
      {query.type === 'devices' ? (
        <InlineFieldRow>
          <InlineField
            label="Label selector"
            labelWidth={16}
            tooltip="Only devices whose labels match, e.g. site=a,floor=2; empty = all devices. Variables allowed."
            htmlFor="iotpipe-var-label-selector"
          >
            <Input
              id="iotpipe-var-label-selector"
              value={labelSelector}
              placeholder="all devices"
              width={40}
              onChange={(e: ChangeEvent<HTMLInputElement>) => setLabelSelector(e.target.value)}
              onBlur={() => onChange({ refId: query.refId, type: 'devices', labelSelector: labelSelector.trim() })}
            />
          </InlineField>
        </InlineFieldRow>
      ) : (
        <InlineFieldRow>
          <InlineField
            label="Device"
            labelWidth={16}
            tooltip="Only metrics stored for this device; empty = any device. Variables allowed, e.g. $device."
            htmlFor="iotpipe-var-device"
          >
            <Input
              id="iotpipe-var-device"
              value={device}
              placeholder="any device"
              width={40}
              onChange={(e: ChangeEvent<HTMLInputElement>) => setDevice(e.target.value)}
              onBlur={() => onChange({ refId: query.refId, type: 'metrics', device: device.trim() })}
            />
          </InlineField>
        </InlineFieldRow>
      )}
    </>
  );
}
