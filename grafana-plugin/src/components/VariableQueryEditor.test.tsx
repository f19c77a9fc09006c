import React from 'react';
import { fireEvent, render, screen } from '@testing-library/react';

import { newDataSource } from '../__fixtures__/fakes';
import { IotpipeVariableQuery } from '../types';
import { VariableQueryEditor } from './VariableQueryEditor';

function setup(query: IotpipeVariableQuery | string | undefined) {
  const { ds } = newDataSource();
  const onChange = jest.fn();
  const utils = render(
    <VariableQueryEditor
      datasource={ds}
      query={query as IotpipeVariableQuery}
      onChange={onChange}
      onRunQuery={jest.fn()}
    />
  );
  return { onChange, ...utils };
}

describe('VariableQueryEditor', () => {
  it('starts as a device list and writes the label selector on blur', () => {
    const { onChange } = setup(undefined);
    expect(screen.getByRole('radio', { name: 'Devices' })).toBeChecked();

    const input = screen.getByLabelText(/Label selector/);
    fireEvent.change(input, { target: { value: ' site=a ' } });
    expect(onChange).not.toHaveBeenCalled();
    fireEvent.blur(input);

    expect(onChange).toHaveBeenCalledWith({ refId: 'variable', type: 'devices', labelSelector: 'site=a' });
  });

  it('switches to metrics and writes the device', () => {
    const { onChange, rerender } = setup({ refId: 'A', type: 'devices', labelSelector: '' });

    fireEvent.click(screen.getByRole('radio', { name: 'Metrics' }));
    expect(onChange).toHaveBeenLastCalledWith({ refId: 'A', type: 'metrics', device: '' });

    const { ds } = newDataSource();
    rerender(
      <VariableQueryEditor
        datasource={ds}
        query={{ refId: 'A', type: 'metrics', device: '' }}
        onChange={onChange}
        onRunQuery={jest.fn()}
      />
    );
    const device = screen.getByLabelText('Device');
    fireEvent.change(device, { target: { value: '$device' } });
    fireEvent.blur(device);
    expect(onChange).toHaveBeenLastCalledWith({ refId: 'A', type: 'metrics', device: '$device' });
  });

  it('opens a plain string query from an older editor', () => {
    setup('metrics(sim-001)');
    expect(screen.getByRole('radio', { name: 'Metrics' })).toBeChecked();
    expect(screen.getByLabelText('Device')).toHaveValue('sim-001');
  });
});
