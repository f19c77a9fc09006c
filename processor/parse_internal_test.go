package processor

import (
	"strconv"
	"testing"
)

func TestParseMillisMatchesStrconv(t *testing.T) {
	for _, s := range []string{"", "0", "1795638020608", "-5", "+7", "12a", " 1", "999999999999999999",
		"9223372036854775807", "9223372036854775808", "000000000000000000001", "٣"} {
		n, ok := parseMillis([]byte(s))
		want, err := strconv.ParseInt(s, 10, 64)
		if ok != (err == nil) || (ok && n != want) {
			t.Errorf("parseMillis(%q) = %d, %v; strconv: %d, %v", s, n, ok, want, err)
		}
	}
}
