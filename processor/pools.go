package processor

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// fetchPools lets the Kafka client decode fetches into recycled record
// slices and decompression buffers (kgo.WithPools). Without them every
// fetched record costs a fresh Record and its share of a fresh buffer, and
// at hundreds of thousands of records a second the garbage collector takes
// a good part of a core. A slice returns to its pool when every record
// decoded into it was recycled (kgo.Record.Recycle), which handleAll does
// right after handling one; nothing may keep a record's Key, Value or
// Headers past that (deadLetter copies them). Records never handled (held
// at a shutdown or a rebalance) are left to the garbage collector.
type fetchPools struct{ recs, bufs sync.Pool }

func (fp *fetchPools) GetRecords(n int) []kgo.Record {
	if s, ok := fp.recs.Get().(*[]kgo.Record); ok && cap(*s) >= n {
		return (*s)[:0]
	}
	return make([]kgo.Record, 0, n)
}

func (fp *fetchPools) PutRecords(s []kgo.Record) { fp.recs.Put(&s) }

func (fp *fetchPools) GetDecompressBytes([]byte, kgo.CompressionCodecType) []byte {
	if b, ok := fp.bufs.Get().(*[]byte); ok {
		return (*b)[:0] // the client grows it when it is too small
	}
	return nil
}

func (fp *fetchPools) PutDecompressBytes(b []byte) { fp.bufs.Put(&b) }
