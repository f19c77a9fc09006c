package broker

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
)

// BenchmarkPublishQoS1 measures QoS 1 messages per second through broker →
// ingest → kfake, each acknowledged after Kafka, with a pipelining client
// (window = MaxInflightPerClient) over one and over several connections.
func BenchmarkPublishQoS1(b *testing.B) {
	for _, conns := range []int{1, 8} {
		b.Run(fmt.Sprintf("conns=%d", conns), func(b *testing.B) {
			const window = 64
			e := newEnv(b, envOpt{inflight: window})
			payload := bytes.Repeat([]byte("x"), 128)
			b.SetBytes(int64(len(payload)))
			b.ResetTimer()
			var wg sync.WaitGroup
			per := b.N / conns
			for c := 0; c < conns; c++ {
				n := per
				if c == 0 {
					n += b.N % conns
				}
				id := fmt.Sprintf("dev-%d", c+1)
				cl, _ := dialRaw(b, e.b.Addr(), 5, id, testDevices[id], nil)
				wg.Add(1)
				go func() {
					defer wg.Done()
					sem := make(chan struct{}, window)
					done := make(chan error, 1)
					go func() {
						for i := 0; i < n; i++ {
							pk, err := cl.read()
							if err != nil || pk.ReasonCode != 0 {
								done <- fmt.Errorf("ack %d: %v %#x", i, err, pk.ReasonCode)
								return
							}
							<-sem
						}
						done <- nil
					}()
					var buf bytes.Buffer
					for i := 0; i < n; i++ {
						sem <- struct{}{}
						buf.Reset()
						pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
							PacketID: uint16(i%60000 + 1), TopicName: "/devices/" + id + "/events", Payload: payload, ProtocolVersion: 5}
						_ = pk.PublishEncode(&buf)
						if _, err := cl.conn.Write(buf.Bytes()); err != nil {
							b.Error(err)
							return
						}
					}
					if err := <-done; err != nil {
						b.Error(err)
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
