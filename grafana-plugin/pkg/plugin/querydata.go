package plugin

import (
	"context"
	"fmt"
	"math"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
	"github.com/grafana/grafana-plugin-sdk-go/data"
	"golang.org/x/sync/errgroup"
)

// summaryChunk is how many device parameters one /summary call carries, so
// a large selection does not make an over-long URL.
const summaryChunk = 100

// QueryData runs the request's queries concurrently, at most
// queryConcurrency at once; each query gets its own response or error.
func (d *Datasource) QueryData(ctx context.Context, req *backend.QueryDataRequest) (*backend.QueryDataResponse, error) {
	resp := backend.NewQueryDataResponse()
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	sem := make(chan struct{}, queryConcurrency)
	for _, q := range req.Queries {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			r := d.query(ctx, q)
			mu.Lock()
			resp.Responses[q.RefID] = r
			mu.Unlock()
		})
	}
	wg.Wait()
	return resp, nil
}

func (d *Datasource) query(ctx context.Context, q backend.DataQuery) (resp backend.DataResponse) {
	defer func() {
		// A bug must fail one query with a message, not the plugin process
		// with every dashboard on it.
		if r := recover(); r != nil {
			d.logger.Error("query panicked", "refId", q.RefID, "panic", r, "stack", string(debug.Stack()))
			resp = backend.ErrDataResponseWithSource(backend.StatusInternal, backend.ErrorSourcePlugin,
				fmt.Sprintf("internal error in the iotpipe plugin: %v", r))
		}
	}()
	if d.settingsErr != nil {
		return backend.ErrDataResponseWithSource(backend.StatusBadRequest, backend.ErrorSourceDownstream,
			"invalid datasource settings: "+d.settingsErr.Error())
	}
	pq, err := ParseQuery(q.JSON, q.QueryType)
	if err != nil {
		return errorResponse(err)
	}
	if !q.TimeRange.From.Before(q.TimeRange.To) {
		return errorResponse(badQuery("the time range is empty (from %s, to %s)",
			formatTime(q.TimeRange.From), formatTime(q.TimeRange.To)))
	}
	sel, err := d.resolveDevices(ctx, pq)
	if err != nil {
		return errorResponse(err)
	}
	var frames data.Frames
	if pq.QueryType == QueryTypeSummary {
		frames, err = d.summaryQuery(ctx, q.TimeRange, pq, sel)
	} else {
		frames, err = d.timeseriesQuery(ctx, q, pq, sel)
	}
	if err != nil {
		return errorResponse(err)
	}
	return backend.DataResponse{Frames: frames}
}

// selection is the resolved device list of a query.
type selection struct {
	devices []string
	// all is set when the query asked for every registered device ("*").
	all bool
}

// resolveDevices expands "*" and the label selector through /api/v1/devices.
// Explicit ids come first in the query's order, then the listed ones in the
// API's order (sorted by id).
func (d *Datasource) resolveDevices(ctx context.Context, q Query) (selection, error) {
	var sel selection
	for _, dev := range q.Devices {
		if dev == "*" {
			sel.all = true
			continue
		}
		sel.devices = append(sel.devices, dev)
	}
	var labels []string
	switch {
	case sel.all:
		// Every registered device; a selector cannot add to that.
	case q.LabelSelector != "":
		var err error
		if labels, err = ParseLabelSelector(q.LabelSelector); err != nil {
			return selection{}, err
		}
	default:
		return sel, nil
	}
	listed, err := d.api.devices(ctx, labels)
	if err != nil {
		return selection{}, fmt.Errorf("listing devices: %w", err)
	}
	for _, dev := range listed {
		sel.devices = append(sel.devices, dev.ID)
	}
	sel.devices = dedupe(sel.devices)
	return sel, nil
}

func (d *Datasource) timeseriesQuery(ctx context.Context, dq backend.DataQuery, q Query, sel selection) (data.Frames, error) {
	info, err := d.apiInfo(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading window sizes: %w", err)
	}
	from, to := dq.TimeRange.From, dq.TimeRange.To
	choice, err := ChooseStep(to.Sub(from), dq.Interval, dq.MaxDataPoints, info.WindowSizesSeconds, q.WindowSeconds, info.MaxPoints)
	if err != nil {
		return nil, err
	}
	frames := make(data.Frames, len(sel.devices)*len(q.Aggregates))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(seriesConcurrency)
	for i, dev := range sel.devices {
		for j, agg := range q.Aggregates {
			p := seriesParams{Device: dev, Metric: q.Metric, Aggregate: agg, From: from, To: to,
				StepSeconds: choice.Step, Window: choice.Window}
			g.Go(func() error {
				pts, err := d.api.series(gctx, p)
				if err != nil {
					return fmt.Errorf("device %q: %w", dev, err)
				}
				frames[i*len(q.Aggregates)+j] = seriesFrame(p, UnitFor(q.Metric, agg, q.Unit), pts)
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if choice.Notice != "" && len(frames) > 0 {
		// Once per query: Grafana lists every frame's notices.
		frames[0].Meta.Notices = append(frames[0].Meta.Notices,
			data.Notice{Severity: data.NoticeSeverityInfo, Text: choice.Notice})
	}
	return frames, nil
}

func seriesFrame(p seriesParams, unit string, pts []Point) *data.Frame {
	times := make([]time.Time, len(pts))
	vals := make([]float64, len(pts))
	for i, pt := range pts {
		times[i], vals[i] = pt.Time.UTC(), pt.Value
	}
	value := data.NewField("value", data.Labels{"device": p.Device, "metric": p.Metric, "aggregate": p.Aggregate}, vals)
	value.Config = &data.FieldConfig{DisplayNameFromDS: p.Device + " " + p.Aggregate, Unit: unit}
	f := data.NewFrame(p.Device, data.NewField("time", nil, times), value)
	f.Meta = &data.FrameMeta{
		Type:                data.FrameTypeTimeSeriesMulti,
		TypeVersion:         data.FrameTypeVersion{0, 1},
		ExecutedQueryString: pathQuery(seriesPath, p.values()),
	}
	return f
}

// summaryQuery asks /summary once per aggregate (in chunks of devices) and
// builds one row per device, or one "fleet" row combining them exactly.
func (d *Datasource) summaryQuery(ctx context.Context, tr backend.TimeRange, q Query, sel selection) (data.Frames, error) {
	wanted := make(map[string]bool, len(sel.devices))
	for _, dev := range sel.devices {
		wanted[dev] = true
	}
	var chunks [][]string
	switch {
	case sel.all:
		// No device parameter means every device with data; the rows are
		// then limited to the registered ones below.
		chunks = [][]string{nil}
	case len(sel.devices) == 0:
		// Nothing selected (a label selector matched no device). Without
		// device parameters the API would answer for every device.
	default:
		chunks = slices.Collect(slices.Chunk(sel.devices, summaryChunk))
	}
	perAgg := make([][]DeviceValue, len(q.Aggregates))
	executed := make([]string, len(q.Aggregates)*len(chunks))
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(seriesConcurrency)
	for i, agg := range q.Aggregates {
		for j, chunk := range chunks {
			vals := summaryValues(q.Metric, agg, tr.From, tr.To, chunk)
			executed[i*len(chunks)+j] = pathQuery(summaryPath, vals)
			g.Go(func() error {
				got, err := d.api.summary(gctx, vals)
				if err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				for _, dv := range got {
					if wanted[dv.Device] {
						perAgg[i] = append(perAgg[i], dv)
					}
				}
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	var rows []string
	values := make([][]float64, len(q.Aggregates))
	if q.Fleet {
		var hasData bool
		row := make([]float64, len(q.Aggregates))
		for i, agg := range q.Aggregates {
			v, ok := CombineFleet(agg, perAgg[i])
			row[i], hasData = v, hasData || ok
			if !ok {
				row[i] = math.NaN()
			}
		}
		if hasData {
			rows = []string{"fleet"}
			for i := range values {
				values[i] = []float64{row[i]}
			}
		}
	} else {
		byDev := make([]map[string]float64, len(q.Aggregates))
		has := map[string]bool{}
		for i, vals := range perAgg {
			byDev[i] = make(map[string]float64, len(vals))
			for _, dv := range vals {
				byDev[i][dv.Device] = dv.Value
				has[dv.Device] = true
			}
		}
		for _, dev := range sel.devices {
			if !has[dev] {
				continue // no data in range: no row, as for a series without points
			}
			rows = append(rows, dev)
			for i := range q.Aggregates {
				v, ok := byDev[i][dev]
				if !ok {
					// Data arrived between the aggregates' calls.
					v = math.NaN()
				}
				values[i] = append(values[i], v)
			}
		}
	}

	if rows == nil {
		rows = []string{}
	}
	fields := []*data.Field{data.NewField("device", nil, rows)}
	for i, agg := range q.Aggregates {
		vals := values[i]
		if vals == nil {
			vals = []float64{}
		}
		f := data.NewField(agg, nil, vals)
		f.Config = &data.FieldConfig{DisplayNameFromDS: agg + " " + q.Metric, Unit: UnitFor(q.Metric, agg, q.Unit)}
		fields = append(fields, f)
	}
	frame := data.NewFrame(q.Metric, fields...)
	frame.Meta = &data.FrameMeta{ExecutedQueryString: strings.Join(executed, "\n")}
	return data.Frames{frame}, nil
}
