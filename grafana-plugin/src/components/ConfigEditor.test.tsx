import React from 'react';
import { fireEvent, render, screen } from '@testing-library/react';
import { DataSourceSettings } from '@grafana/data';

import { IotpipeDataSourceOptions, IotpipeSecureJsonData } from '../types';
import { ConfigEditor, urlProblem } from './ConfigEditor';

type Settings = DataSourceSettings<IotpipeDataSourceOptions, IotpipeSecureJsonData>;

function settings(patch: Partial<Settings> = {}): Settings {
  return {
    id: 1,
    uid: 'u',
    orgId: 1,
    name: 'iotpipe',
    type: 'iotpipe-iotpipe-datasource',
    typeName: 'iotpipe',
    typeLogoUrl: '',
    access: 'proxy',
    url: '',
    user: '',
    database: '',
    basicAuth: false,
    basicAuthUser: '',
    isDefault: false,
    withCredentials: false,
    readOnly: false,
    jsonData: {},
    secureJsonFields: {},
    ...patch,
  } as Settings;
}

describe('ConfigEditor', () => {
  it('writes the URL into jsonData.url and keeps other settings', () => {
    const onOptionsChange = jest.fn();
    const options = settings({ jsonData: { url: 'http://old:8080', timeInterval: '10s' } as IotpipeDataSourceOptions });
    render(<ConfigEditor options={options} onOptionsChange={onOptionsChange} />);

    const url = screen.getByLabelText(/^URL/);
    expect(url).toHaveValue('http://old:8080');
    fireEvent.change(url, { target: { value: 'http://iotpipe:8080' } });

    expect(onOptionsChange).toHaveBeenCalledTimes(1);
    const next: Settings = onOptionsChange.mock.calls[0][0];
    expect(next.jsonData).toEqual({ url: 'http://iotpipe:8080', timeInterval: '10s' });
    expect(next.secureJsonData ?? {}).not.toHaveProperty('token');
  });

  it('sends a new token only in secureJsonData', () => {
    const onOptionsChange = jest.fn();
    render(<ConfigEditor options={settings()} onOptionsChange={onOptionsChange} />);

    fireEvent.change(screen.getByLabelText(/API token/), { target: { value: 's3cret' } });

    const next: Settings = onOptionsChange.mock.calls[0][0];
    expect(next.secureJsonData).toEqual({ token: 's3cret' });
    expect(JSON.stringify(next.jsonData)).not.toContain('s3cret');
  });

  it('shows no error for a good URL', () => {
    render(<ConfigEditor options={settings({ jsonData: { url: 'http://iotpipe:8080' } })} onOptionsChange={jest.fn()} />);
    expect(screen.queryByRole('alert')).not.toBeInTheDocument();
  });

  it('shows a saved token as configured and resets it', () => {
    const onOptionsChange = jest.fn();
    render(<ConfigEditor options={settings({ secureJsonFields: { token: true } })} onOptionsChange={onOptionsChange} />);

    expect(screen.getByDisplayValue('configured')).toBeDisabled();
    fireEvent.click(screen.getByRole('button', { name: /reset/i }));

    const next: Settings = onOptionsChange.mock.calls[0][0];
    expect(next.secureJsonFields.token).toBe(false);
    expect(next.secureJsonData).toEqual({ token: '' });
  });

  it('sends a CA certificate only in secureJsonData and keeps the token', () => {
    const onOptionsChange = jest.fn();
    render(<ConfigEditor options={settings({ secureJsonData: { token: 't' } })} onOptionsChange={onOptionsChange} />);

    const pem = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----';
    fireEvent.change(screen.getByLabelText(/CA certificate/), { target: { value: pem } });

    const next: Settings = onOptionsChange.mock.calls[0][0];
    expect(next.secureJsonData).toEqual({ token: 't', tlsCACert: pem });
    expect(JSON.stringify(next.jsonData)).not.toContain('BEGIN CERTIFICATE');
  });

  it('shows a saved CA certificate as configured and resets it', () => {
    const onOptionsChange = jest.fn();
    render(<ConfigEditor options={settings({ secureJsonFields: { tlsCACert: true } })} onOptionsChange={onOptionsChange} />);

    const buttons = screen.getAllByRole('button', { name: /reset/i });
    expect(buttons).toHaveLength(1); // the token is not configured: only the CA's reset
    fireEvent.click(buttons[0]);

    const next: Settings = onOptionsChange.mock.calls[0][0];
    expect(next.secureJsonFields.tlsCACert).toBe(false);
    expect(next.secureJsonData).toEqual({ tlsCACert: '' });
  });

  it('explains a URL that includes /api', () => {
    render(
      <ConfigEditor options={settings({ jsonData: { url: 'http://iotpipe:8080/api' } })} onOptionsChange={jest.fn()} />
    );
    expect(screen.getByRole('alert')).toHaveTextContent(/without \/api/);
  });

  it.each([
    ['', undefined],
    ['http://iotpipe:8080', undefined],
    ['https://iot.example.com/prefix', undefined],
    ['iotpipe:8080', 'scheme'],
    ['http://iotpipe:8080/api/v1/', 'api'],
  ])('urlProblem(%p)', (url, want) => {
    const got = urlProblem(url);
    if (want === undefined) {
      expect(got).toBeUndefined();
    } else if (want === 'scheme') {
      expect(got).toMatch(/http:\/\/ or https:\/\//);
    } else {
      expect(got).toMatch(/without \/api/);
    }
  });
});
