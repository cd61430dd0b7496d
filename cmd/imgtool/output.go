package main

import (
	"encoding/json"
	"io"
)

// writeJSON prints v as the commands' --output json does: indented by two
// spaces, ended by a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
