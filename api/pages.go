package api

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/iotpipe/iotpipe/registry"
)

// Paging of GET /api/v1/devices.
const (
	// DefaultPageSize is the page size when page_size is absent.
	DefaultPageSize = 100
	// MaxPageSize is the largest page_size accepted; a larger one is a 400,
	// not silently shortened, so a client that asked for more notices.
	MaxPageSize = 1000
)

// DevicePage is the body of GET /api/v1/devices.
type DevicePage struct {
	Devices []Device `json:"devices"`
	// NextPageToken continues the listing after the last device of this
	// page; it is empty on the last page.
	NextPageToken string `json:"next_page_token"`
}

// The page token is the last id of the page, base64url: ids are unique and
// the listing is in id order, so the next page starts strictly after it.
// Devices created or deleted between two requests are then neither repeated
// nor do they make the listing skip others (an offset would do both). It is
// opaque to clients; only its format is checked here.
func encodePageToken(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(lastID))
}

func decodePageToken(tok string) (string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || registry.ValidateID(string(b)) != nil {
		return "", false
	}
	return string(b), true
}

// pageParams reads page_size and page_token and answers a 400 itself.
func pageParams(w http.ResponseWriter, q url.Values) (size int, after string, ok bool) {
	size = DefaultPageSize
	if v := q.Get("page_size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPageSize {
			writeError(w, http.StatusBadRequest, "bad_page_size",
				"page_size must be an integer from 1 to "+strconv.Itoa(MaxPageSize)+", got "+strconv.Quote(v))
			return 0, "", false
		}
		size = n
	}
	if v := q.Get("page_token"); v != "" {
		if after, ok = decodePageToken(v); !ok {
			writeError(w, http.StatusBadRequest, "bad_page_token",
				"page_token is not a next_page_token of this API; start again without it")
			return 0, "", false
		}
	}
	return size, after, true
}

// listDevices answers GET /api/v1/devices[?label=k=v[,k2=v2]...][&page_size=N][&page_token=T]:
// the devices whose labels match every term, in id order, a page at a time.
// The filter applies before paging, so every page but the last is full.
func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sel, err := registry.ParseSelector(strings.Join(q["label"], ","))
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "label: "+err.Error())
		return
	}
	size, after, ok := pageParams(w, q)
	if !ok {
		return
	}
	page := DevicePage{Devices: make([]Device, 0, min(size, 64))}
	for _, d := range s.cfg.Registry.List() { // sorted by id
		if d.ID <= after || !sel.Matches(d) {
			continue
		}
		if len(page.Devices) == size {
			// One more match exists: there is a next page.
			page.NextPageToken = encodePageToken(page.Devices[size-1].ID)
			break
		}
		page.Devices = append(page.Devices, s.deviceJSON(d))
	}
	writeJSON(w, http.StatusOK, page)
}
