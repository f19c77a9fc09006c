// Package storage keeps window results and raw readings in ClickHouse and
// reads them back re-aggregated. One SQL schema and query set runs on two
// engines; only exec, query and batch insert differ:
//
//   - chDB, the ClickHouse engine in-process (libchdb.so, loaded lazily from
//     CHDB_LIB_PATH; install with `export CHDB_LIB_PATH=$(scripts/chdb.sh)`),
//     persisted under Config.Path. One data path per process.
//   - a ClickHouse server over the native protocol (clickhouse-go), for
//     Config.ClickHouseAddr.
//
// Use:
//
//	s, err := storage.Open(ctx, storage.Config{
//		Path:         filepath.Join(dataDir, "chdb"), // or ClickHouseAddr: []string{"ch:9000"}
//		RawRetention: storage.DefaultRawRetention,
//		Logger:       log,
//	})
//	if err != nil { ... }
//	defer s.Close()
//	err = s.WriteBatch(ctx, windows, readings) // nil = stored; commit offsets now
//	pts, err := s.Series(ctx, storage.SeriesQuery{Device: "dev-1", Metric: "temperature",
//		Aggregate: storage.Mean, From: from, To: to, Step: time.Minute})
//	if errors.Is(err, storage.ErrBadStep) || errors.Is(err, storage.ErrBadAggregate) { /* 400 */ }
//
// Re-emitted windows (same device, metric, size, start) are collapsed to the
// highest Version at read time (FINAL), and redelivered readings to one row,
// so writes are safe to retry.
package storage
