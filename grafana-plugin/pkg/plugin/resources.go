package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
)

// ResourceDevice is one entry of the devices resource.
type ResourceDevice struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
}

// CallResource serves the editor's lookups: devices[?label=k=v,k2=v2],
// metrics[?device=D] and windows. Errors carry the API's status and a JSON
// {"error": "..."} body.
func (d *Datasource) CallResource(ctx context.Context, req *backend.CallResourceRequest, sender backend.CallResourceResponseSender) error {
	status, body := d.resource(ctx, req)
	b, err := json.Marshal(body)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encoding the answer failed"}`)
	}
	return sender.Send(&backend.CallResourceResponse{
		Status:  status,
		Headers: map[string][]string{"Content-Type": {"application/json"}},
		Body:    b,
	})
}

type resourceError struct {
	Error string `json:"error"`
}

func (d *Datasource) resource(ctx context.Context, req *backend.CallResourceRequest) (int, any) {
	if d.settingsErr != nil {
		return http.StatusBadRequest, resourceError{"invalid datasource settings: " + d.settingsErr.Error()}
	}
	if req.Method != "" && req.Method != http.MethodGet {
		return http.StatusMethodNotAllowed, resourceError{fmt.Sprintf("method %s: resources are read with GET", req.Method)}
	}
	var q url.Values
	if u, err := url.Parse(req.URL); err == nil {
		q = u.Query()
	}
	switch strings.Trim(req.Path, "/") {
	case "devices":
		// The contract's form is one comma-separated label parameter;
		// repeated ones are accepted too.
		var labels []string
		for _, l := range q["label"] {
			sel, err := ParseLabelSelector(l)
			if err != nil {
				return http.StatusBadRequest, resourceError{strings.TrimPrefix(err.Error(), errBadQuery.Error()+": ")}
			}
			labels = append(labels, sel...)
		}
		devs, err := d.api.devices(ctx, labels)
		if err != nil {
			return resourceErr(err)
		}
		out := make([]ResourceDevice, 0, len(devs))
		for _, dv := range devs {
			labels := dv.Labels
			if labels == nil {
				labels = map[string]string{}
			}
			out = append(out, ResourceDevice{ID: dv.ID, Name: dv.Name, Labels: labels})
		}
		return http.StatusOK, out
	case "metrics":
		ms, err := d.api.metrics(ctx, q.Get("device"))
		if err != nil {
			return resourceErr(err)
		}
		if ms == nil {
			ms = []string{}
		}
		return http.StatusOK, ms
	case "windows":
		info, err := d.apiInfo(ctx)
		if err != nil {
			return resourceErr(err)
		}
		return http.StatusOK, info.WindowSizesSeconds
	}
	return http.StatusNotFound, resourceError{fmt.Sprintf("unknown resource %q: want devices, metrics or windows", req.Path)}
}

func resourceErr(err error) (int, any) {
	var ae *APIError
	if errors.As(err, &ae) {
		if ae.Status >= 500 {
			return ae.Status, resourceError{ae.Error()} // names the URL: the API side must be fixed
		}
		return ae.Status, resourceError{ae.Message}
	}
	return http.StatusBadGateway, resourceError{err.Error()}
}
