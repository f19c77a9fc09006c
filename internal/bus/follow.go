package bus

import (
	"context"
	"errors"

	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Follow is the loop of every instance that keeps a topic in memory (the
// registry, device state, presence): it polls cl until ctx is done (then it
// returns nil) and hands each record to apply, in offset order per
// partition, then calls polled (if not nil) once per poll. Fetch errors are
// logged; the client retries them. It returns an error only when cl was
// closed under it.
func Follow(ctx context.Context, cl *kgo.Client, log zerolog.Logger, apply func(*kgo.Record), polled func()) error {
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if fs.IsClientClosed() {
			return errors.New("kafka client closed")
		}
		fs.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				log.Warn().Err(err).Str("topic", t).Int32("partition", p).Msg("fetch failed; retrying")
			}
		})
		fs.EachRecord(apply)
		if polled != nil {
			polled()
		}
	}
}
