import React from 'react';
import { act, fireEvent, render, screen, waitFor, within } from '@testing-library/react';

import { newDataSource } from '../__fixtures__/fakes';
import { IotpipeQuery } from '../types';
import { pickDevices, QueryEditor, singleDevice } from './QueryEditor';

const VARS = { device: ['sim-001', 'sim-002'] };

function setup(query: IotpipeQuery) {
  const { ds, getResource } = newDataSource(VARS);
  const onChange = jest.fn();
  const onRunQuery = jest.fn();
  const utils = render(<QueryEditor datasource={ds} query={query} onChange={onChange} onRunQuery={onRunQuery} />);
  const rerender = (next: IotpipeQuery) =>
    utils.rerender(<QueryEditor datasource={ds} query={next} onChange={onChange} onRunQuery={onRunQuery} />);
  return { ds, getResource, onChange, onRunQuery, rerender };
}

const BASE: IotpipeQuery = {
  refId: 'A',
  schemaVersion: 1,
  queryType: 'timeseries',
  devices: [],
  labelSelector: '',
  metric: '',
  aggregates: ['mean'],
  windowSeconds: 0,
  fleet: false,
  unit: '',
};

/** Opens a Grafana Select by its aria-label and returns the open menu. */
async function openSelect(label: string) {
  const input = screen.getByLabelText(label);
  fireEvent.keyDown(input, { key: 'ArrowDown' });
  return screen.findByLabelText('Select options menu');
}

async function pick(label: string, option: string | RegExp) {
  const menu = await openSelect(label);
  fireEvent.click(await within(menu).findByText(option));
}

/** Waits until the editor's resource calls have settled (loading spinners gone). */
async function settle(getResource: jest.Mock | jest.SpyInstance, calls: number) {
  await waitFor(() => expect(getResource).toHaveBeenCalledTimes(calls));
  await act(async () => {});
}

describe('QueryEditor', () => {
  it('loads devices, metrics and windows through getResource', async () => {
    const { getResource } = setup(BASE);
    await settle(getResource, 3);
    expect(getResource).toHaveBeenCalledWith('devices', undefined);
    expect(getResource).toHaveBeenCalledWith('metrics', undefined);
    expect(getResource).toHaveBeenCalledWith('windows');
  });

  it('offers devices by name with their labels, variables and All, and writes the picked id', async () => {
    const { getResource, onChange, onRunQuery } = setup(BASE);
    await settle(getResource, 3);

    const menu = await openSelect('Devices');
    expect(within(menu).getByText('All devices (*)')).toBeInTheDocument();
    expect(within(menu).getByText('$device')).toBeInTheDocument();
    expect(within(menu).getByText('sim-002')).toBeInTheDocument();
    expect(within(menu).getByText('floor=2, site=a')).toBeInTheDocument();
    fireEvent.click(within(menu).getByText('Kitchen (sim-001)'));

    expect(onChange).toHaveBeenLastCalledWith({ ...BASE, devices: ['sim-001'] });
    expect(onRunQuery).toHaveBeenCalled();
  });

  it('adds a template variable to the devices', async () => {
    const { getResource, onChange } = setup({ ...BASE, devices: ['sim-003'] });
    await settle(getResource, 3);
    await pick('Devices', '$device');
    expect(onChange).toHaveBeenLastCalledWith({ ...BASE, devices: ['sim-003', '$device'] });
  });

  it('replaces explicit devices when All (*) is picked', async () => {
    const { getResource, onChange } = setup({ ...BASE, devices: ['sim-001', 'sim-002'] });
    await settle(getResource, 3);
    await pick('Devices', 'All devices (*)');
    expect(onChange).toHaveBeenLastCalledWith({ ...BASE, devices: ['*'] });
  });

  it('lists the metrics of the one selected device and writes the picked metric', async () => {
    const { getResource, onChange, rerender } = setup({ ...BASE, devices: ['sim-003'] });
    await settle(getResource, 3);
    expect(getResource).toHaveBeenCalledWith('metrics', { device: 'sim-003' });

    await pick('Metric', 'pressure');
    expect(onChange).toHaveBeenLastCalledWith({ ...BASE, devices: ['sim-003'], metric: 'pressure' });

    // with two devices the picker lists the metrics of all devices
    rerender({ ...BASE, devices: ['sim-003', 'sim-001'] });
    await settle(getResource, 4);
    expect(getResource).toHaveBeenLastCalledWith('metrics', undefined);
  });

  it('writes aggregates', async () => {
    const { getResource, onChange } = setup({ ...BASE, metric: 'temperature' });
    await settle(getResource, 3);
    await pick('Aggregates', 'max');
    expect(onChange).toHaveBeenLastCalledWith({ ...BASE, metric: 'temperature', aggregates: ['mean', 'max'] });
  });

  it('offers Auto and the stored windows, finest first', async () => {
    const { getResource, onChange } = setup(BASE);
    await settle(getResource, 3);
    const menu = await openSelect('Window');
    const labels = within(menu)
      .getAllByRole('option')
      .map((o) => o.textContent);
    expect(labels.map((l) => l?.replace(/\d+ seconds|Coarsest.*/, ''))).toEqual(['Auto', '10s', '1m']);
    fireEvent.click(within(menu).getByText('1m'));
    expect(onChange).toHaveBeenLastCalledWith({ ...BASE, windowSeconds: 60 });
  });

  it('switches to summary and shows the fleet switch there only', async () => {
    const { getResource, onChange, rerender } = setup(BASE);
    await settle(getResource, 3);
    expect(screen.queryByLabelText('Fleet')).not.toBeInTheDocument();

    fireEvent.click(screen.getByRole('radio', { name: 'Summary' }));
    expect(onChange).toHaveBeenLastCalledWith({ ...BASE, queryType: 'summary' });

    rerender({ ...BASE, queryType: 'summary' });
    fireEvent.click(screen.getByLabelText('Fleet'));
    expect(onChange).toHaveBeenLastCalledWith({ ...BASE, queryType: 'summary', fleet: true });
  });

  it('writes the label selector and unit on blur', async () => {
    const { getResource, onChange, onRunQuery } = setup(BASE);
    await settle(getResource, 3);

    const selector = screen.getByLabelText('Labels');
    fireEvent.change(selector, { target: { value: 'site=a,floor=2' } });
    expect(onChange).not.toHaveBeenCalled();
    fireEvent.blur(selector);
    expect(onChange).toHaveBeenLastCalledWith({ ...BASE, labelSelector: 'site=a,floor=2' });
    expect(onRunQuery).toHaveBeenCalledTimes(1);

    const unit = screen.getByLabelText('Unit');
    fireEvent.change(unit, { target: { value: 'fahrenheit' } });
    fireEvent.blur(unit);
    expect(onChange).toHaveBeenLastCalledWith({ ...BASE, unit: 'fahrenheit' });
  });

  it('migrates a schemaVersion 0 query on load, once', async () => {
    const v0 = { refId: 'B', device: 'sim-001', metric: 'temperature', aggregate: 'max' } as unknown as IotpipeQuery;
    const { getResource, onChange, rerender } = setup(v0);
    await settle(getResource, 3);

    expect(onChange).toHaveBeenCalledTimes(1);
    const migrated = onChange.mock.calls[0][0];
    expect(migrated).toEqual({
      refId: 'B',
      schemaVersion: 1,
      queryType: 'timeseries',
      devices: ['sim-001'],
      metric: 'temperature',
      aggregates: ['max'],
      windowSeconds: 0,
    });
    // the editor already shows the migrated model: the device narrows the metric list
    expect(getResource).toHaveBeenCalledWith('metrics', { device: 'sim-001' });

    rerender(migrated);
    await act(async () => {});
    expect(onChange).toHaveBeenCalledTimes(1);
  });

  it('shows a resource error next to its picker', async () => {
    const { ds } = newDataSource();
    jest.spyOn(ds, 'getResource').mockImplementation(((path: string) =>
      path === 'devices'
        ? Promise.reject({ status: 401, data: { error: 'token rejected by the iotpipe API' } })
        : Promise.resolve([])) as never);
    render(<QueryEditor datasource={ds} query={BASE} onChange={jest.fn()} onRunQuery={jest.fn()} />);
    expect(await screen.findByText('token rejected by the iotpipe API')).toBeInTheDocument();
  });
});

describe('device picking rules', () => {
  it('pickDevices: * and explicit devices exclude each other', () => {
    expect(pickDevices(['a'], ['a', '*'])).toEqual(['*']);
    expect(pickDevices(['*'], ['*', 'b'])).toEqual(['b']);
    expect(pickDevices(['a', 'b'], ['b'])).toEqual(['b']);
  });

  it('singleDevice: only one literal device narrows the metric list', () => {
    expect(singleDevice(['sim-001'])).toBe('sim-001');
    expect(singleDevice(['$device'])).toBeUndefined();
    expect(singleDevice(['*'])).toBeUndefined();
    expect(singleDevice(['a', 'b'])).toBeUndefined();
    expect(singleDevice([])).toBeUndefined();
  });
});
