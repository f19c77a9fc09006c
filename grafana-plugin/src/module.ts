import { DataSourcePlugin } from '@grafana/data';

import { ConfigEditor } from './components/ConfigEditor';
import { QueryEditor } from './components/QueryEditor';
import { DataSource } from './datasource';
import { IotpipeDataSourceOptions, IotpipeQuery, IotpipeSecureJsonData } from './types';

export const plugin = new DataSourcePlugin<DataSource, IotpipeQuery, IotpipeDataSourceOptions, IotpipeSecureJsonData>(
  DataSource
)
  .setConfigEditor(ConfigEditor)
  .setQueryEditor(QueryEditor);
