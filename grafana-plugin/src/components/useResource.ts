import { DependencyList, useEffect, useState } from 'react';

import { errorMessage } from '../errors';

export interface ResourceState<T> {
  value?: T;
  loading: boolean;
  error?: string;
}

/** Loads a datasource resource for an editor; the latest call wins when the dependencies change. */
export function useResource<T>(load: () => Promise<T>, deps: DependencyList): ResourceState<T> {
  const [state, setState] = useState<ResourceState<T>>({ loading: true });
  useEffect(() => {
    let current = true;
    setState((s) => ({ value: s.value, loading: true }));
    load().then(
      (value) => current && setState({ value, loading: false }),
      (err) => current && setState({ loading: false, error: errorMessage(err) })
    );
    return () => {
      current = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);
  return state;
}
