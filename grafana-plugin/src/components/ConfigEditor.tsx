import React, { ChangeEvent, FormEvent } from 'react';
import { DataSourcePluginOptionsEditorProps } from '@grafana/data';
import { Field, FieldSet, Input, SecretInput, SecretTextArea } from '@grafana/ui';

import { IotpipeDataSourceOptions, IotpipeSecureJsonData } from '../types';

type Props = DataSourcePluginOptionsEditorProps<IotpipeDataSourceOptions, IotpipeSecureJsonData>;

/** Why a URL will not work against the iotpipe API, or undefined when it looks right. */
export function urlProblem(url: string): string | undefined {
  const u = url.trim();
  if (u === '') {
    return undefined;
  }
  if (!/^https?:\/\/[^/\s]+/i.test(u)) {
    return 'Use an http:// or https:// URL, e.g. http://iotpipe:8080';
  }
  if (/\/api(\/v1)?\/?$/i.test(u)) {
    return 'Give the base URL without /api; the plugin adds /api/v1/... itself';
  }
  return undefined;
}

export function ConfigEditor({ options, onOptionsChange }: Props) {
  const jsonData = options.jsonData ?? {};
  const secureJsonData = (options.secureJsonData ?? {}) as IotpipeSecureJsonData;
  const url = jsonData.url ?? '';
  const problem = urlProblem(url);

  const onUrlChange = (event: ChangeEvent<HTMLInputElement>) => {
    onOptionsChange({ ...options, jsonData: { ...jsonData, url: event.target.value } });
  };

  type SecretEvent = FormEvent<HTMLInputElement | HTMLTextAreaElement>;
  const setSecret = (key: keyof IotpipeSecureJsonData) => (event: SecretEvent) => {
    onOptionsChange({ ...options, secureJsonData: { ...secureJsonData, [key]: event.currentTarget.value } });
  };

  const resetSecret = (key: keyof IotpipeSecureJsonData) => () => {
    onOptionsChange({
      ...options,
      secureJsonFields: { ...options.secureJsonFields, [key]: false },
      secureJsonData: { ...secureJsonData, [key]: '' },
    });
  };

  return (
    <FieldSet label="iotpipe API">
      <Field
        label="URL"
        description="Base URL of the iotpipe HTTP API, without /api."
        invalid={Boolean(problem)}
        error={problem}
        required
      >
        <Input
          id="iotpipe-config-url"
          value={url}
          placeholder={options.url || 'http://iotpipe:8080'}
          onChange={onUrlChange}
          width={48}
        />
      </Field>
      <Field
        label="API token"
        description="Bearer token for the iotpipe API. A read-only token is enough; it is stored encrypted and never sent back to the browser."
      >
        <SecretInput
          id="iotpipe-config-token"
          isConfigured={Boolean(options.secureJsonFields?.token)}
          value={secureJsonData.token ?? ''}
          placeholder="read-only API token"
          onChange={setSecret('token')}
          onReset={resetSecret('token')}
          width={48}
        />
      </Field>
      <Field
        label="CA certificate"
        description="Only for an https URL whose certificate a private CA signed: that CA's certificate (PEM). Empty trusts the system's CAs."
      >
        <SecretTextArea
          id="iotpipe-config-ca"
          isConfigured={Boolean(options.secureJsonFields?.tlsCACert)}
          value={secureJsonData.tlsCACert ?? ''}
          placeholder="-----BEGIN CERTIFICATE-----"
          onChange={setSecret('tlsCACert')}
          onReset={resetSecret('tlsCACert')}
          rows={5}
          cols={64}
        />
      </Field>
    </FieldSet>
  );
}
