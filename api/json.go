package api

import (
	"encoding/json"
	"net/http"
)

type Error struct {
	Message string `json:"error"`
	Code    string `json:"code"`
	Status  int    `json:"-"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing useful to do
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	if rec, ok := w.(*statusRecorder); ok {
		rec.code = code // for the request log
	}
	writeJSON(w, status, Error{Message: msg, Code: code})
}

// Error is the body of every error response. It is also what Client methods
// return for a non-2xx answer.
func (e *Error) Error() string { return e.Message + " (" + e.Code + ")" }
