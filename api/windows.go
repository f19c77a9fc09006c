package api

import (
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/iotpipe/iotpipe/storage"
)

// Info is the body of GET /api/v1/info: what a dashboard can ask for.
type Info struct {
	WindowSizesSeconds []int64  `json:"window_sizes_seconds"`
	Aggregates         []string `json:"aggregates"`
	MaxPoints          int      `json:"max_points"`
}

func (s *Server) info(w http.ResponseWriter, _ *http.Request) {
	var sizes []int64
	for _, d := range s.cfg.WindowSizes {
		sizes = append(sizes, int64(d/time.Second))
	}
	slices.Sort(sizes)
	writeJSON(w, http.StatusOK, Info{
		WindowSizesSeconds: slices.Compact(sizes),
		Aggregates:         []string{string(storage.Mean), string(storage.Max), string(storage.Min), string(storage.Count), string(storage.Sum)},
		MaxPoints:          s.cfg.MaxPoints,
	})
}

func (s *Server) metrics(w http.ResponseWriter, r *http.Request) {
	var (
		list []string
		err  error
	)
	if d := r.URL.Query().Get("device"); d != "" {
		list, err = s.cfg.Store.Metrics(r.Context(), d)
	} else {
		list, err = s.cfg.Store.AllMetrics(r.Context())
	}
	if err != nil {
		s.storageError(w, err)
		return
	}
	if list == nil {
		list = []string{}
	}
	writeJSON(w, http.StatusOK, map[string][]string{"metrics": list})
}

// Window is one stored window result as GET /api/v1/windows returns it.
type Window struct {
	Device        string    `json:"device"`
	Metric        string    `json:"metric"`
	WindowSeconds int64     `json:"window_seconds"`
	Start         time.Time `json:"start"`
	Count         uint64    `json:"count"`
	Sum           float64   `json:"sum"`
	Min           float64   `json:"min"`
	Max           float64   `json:"max"`
	Mean          float64   `json:"mean"`
	First         float64   `json:"first"`
	Last          float64   `json:"last"`
	FirstAt       time.Time `json:"first_at"`
	LastAt        time.Time `json:"last_at"`
	// Version grows when a window is re-emitted with late readings: a
	// follower re-sends a window whose version changed.
	Version uint64 `json:"version"`
}

// maxWindows caps one /windows answer: it reads whole rows, and following a
// device needs only the recent ones.
const maxWindows = 10000

// windows answers GET /api/v1/windows: the stored windows of one device's
// metric whose start is in [from, to) (default: the last hour up to an hour
// ahead), latest version each, ordered by size then start. Polling it for a
// recent range and comparing versions is how a dashboard follows new
// windows without a connection per device to the processors.
func (s *Server) windows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	device, metric := q.Get("device"), q.Get("metric")
	if device == "" || metric == "" {
		writeError(w, http.StatusBadRequest, "bad_request", "device and metric are required")
		return
	}
	now := time.Now().UTC()
	from, err := parseTime(q.Get("from"), now, now.Add(-time.Hour))
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "from: "+err.Error())
		return
	}
	to, err := parseTime(q.Get("to"), now, now.Add(time.Hour))
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", "to: "+err.Error())
		return
	}
	size, err := windowParam(q)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	limit := maxWindows
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxWindows {
			writeError(w, http.StatusBadRequest, "bad_request", "limit must be an integer from 1 to "+strconv.Itoa(maxWindows))
			return
		}
		limit = n
	}
	list, err := s.cfg.Store.Windows(r.Context(), storage.WindowsQuery{
		Device: device, Metric: metric, Size: size, From: from, To: to, Limit: limit,
	})
	if err != nil {
		s.storageError(w, err)
		return
	}
	out := make([]Window, 0, len(list))
	for _, x := range list {
		out = append(out, Window{
			Device: x.Device, Metric: x.Metric, WindowSeconds: int64(x.Size / time.Second), Start: x.Start,
			Count: x.Count, Sum: x.Sum, Min: x.Min, Max: x.Max, Mean: x.Sum / float64(x.Count),
			First: x.First, Last: x.Last, FirstAt: x.FirstAt, LastAt: x.LastAt, Version: x.Version,
		})
	}
	writeJSON(w, http.StatusOK, map[string][]Window{"windows": out})
}
