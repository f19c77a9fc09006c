package processor

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// feed holds polled records that are not handled yet, per partition in
// offset order. process takes its work from it in rounds while the poll
// loop adds what it polls meanwhile, so a partition whose records run out
// picks up its next ones at the next round instead of idling until every
// other partition of the same poll is done (a poll's partitions differ in
// size, and with one partition left one core has nothing to do).
type feed struct {
	mu     sync.Mutex
	queued map[int32][]*fetched
	held   int           // records queued and not yet handled
	room   chan struct{} // signalled when held drops
	closed bool          // process returned: add refuses, the loop keeps the records
}

func newFeed() *feed {
	return &feed{queued: make(map[int32][]*fetched), room: make(chan struct{}, 1)}
}

// add queues fs's records of the telemetry topic. It refuses (false) when
// process has returned, or when fs has a partition we do not know: the
// loop then processes fs itself next (restoring the partition first).
func (fd *feed) add(p *Processor, fs kgo.Fetches) bool {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	if fd.closed {
		return false
	}
	if len(p.unknownPartitions(fs)) > 0 {
		return false
	}
	fs.EachPartition(func(ft kgo.FetchTopicPartition) {
		if !p.hasRecords(ft) {
			return
		}
		fd.queued[ft.Partition] = append(fd.queued[ft.Partition],
			&fetched{id: ft.Partition, part: p.parts[ft.Partition], recs: ft.Records, highWM: ft.HighWatermark})
		fd.held += len(ft.Records)
	})
	return true
}

// heads returns, per partition with queued records, the oldest batch of
// them: one round's work. When nothing is queued it closes the feed.
func (fd *feed) heads(work []*fetched) []*fetched {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	for _, q := range fd.queued {
		if len(q) > 0 {
			work = append(work, q[0])
		}
	}
	if len(work) == 0 {
		fd.closed = true
	}
	return work
}

// next records that f is fully handled and returns the partition's next
// queued records, or nil.
func (fd *feed) next(f *fetched) *fetched {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	q := fd.queued[f.id]
	q[0] = nil
	q = q[1:]
	fd.queued[f.id] = q
	fd.held -= len(f.recs)
	select {
	case fd.room <- struct{}{}:
	default:
	}
	if len(q) == 0 {
		return nil
	}
	return q[0]
}

func (fd *feed) records() int {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	return fd.held
}
