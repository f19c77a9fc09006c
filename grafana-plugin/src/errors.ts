/**
 * The message of a failed getResource or query call. The backend answers resources with {"error": "..."};
 * Grafana's fetch errors carry it in `data`.
 */
export function errorMessage(err: unknown): string {
  if (err && typeof err === 'object') {
    const e = err as { data?: { error?: string; message?: string }; message?: string; statusText?: string };
    return e.data?.error || e.data?.message || e.message || e.statusText || 'request failed';
  }
  return String(err);
}
