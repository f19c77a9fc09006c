package testcpu

import (
	"testing"
	"time"
)

func TestTimeCountsWork(t *testing.T) {
	c0 := Time(t)
	x := 0
	for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); x++ {
	}
	if used := Time(t) - c0; used < 50*time.Millisecond {
		t.Fatalf("100 ms of spinning (%d loops) counted as %v of CPU", x, used)
	}
}

func TestWaitQuiet(t *testing.T) {
	stop := make(chan struct{})
	spun := make(chan struct{})
	go func() { // busy for the first 400 ms
		defer close(spun)
		for end := time.Now().Add(400 * time.Millisecond); time.Now().Before(end); {
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	if WaitQuiet(t, 200*time.Millisecond) {
		t.Fatal("quiet while a goroutine spins")
	}
	<-spun
	if !WaitQuiet(t, 10*time.Second) {
		t.Fatal("not quiet once the spinning stopped")
	}
	close(stop)
}
