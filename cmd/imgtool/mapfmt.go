package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/imgtool/imgtool/qcow2"
)

// writeMapHuman writes entries in qemu-img map's human layout: only runs
// with data at a known offset, with the file holding them.
func writeMapHuman(w io.Writer, entries []qcow2.MapEntry) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File")
	for _, e := range entries {
		if e.Data && e.Offset == nil {
			return fmt.Errorf("the image contains compressed or encrypted clusters, which have no host offset; use --output=json")
		}
		if e.Data && !e.Zero {
			fmt.Fprintf(&b, "%-16s%-16s%-16s%s\n", hexC(e.Start), hexC(e.Length), hexC(*e.Offset), e.Filename)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// hexC formats like C's %#x: "0" for zero, "0x..." otherwise.
func hexC(v int64) string {
	if v == 0 {
		return "0"
	}
	return "0x" + strconv.FormatInt(v, 16)
}

// writeMapJSON writes entries the way `qemu-img map --output=json` does:
// a JSON array with one object per line.
func writeMapJSON(w io.Writer, entries []qcow2.MapEntry) error {
	var b strings.Builder
	b.WriteString("[")
	for i, e := range entries {
		if i > 0 {
			b.WriteString(",\n")
		}
		fmt.Fprintf(&b, `{ "start": %d, "length": %d, "depth": %d, "present": %t, "zero": %t, "data": %t`,
			e.Start, e.Length, e.Depth, e.Present, e.Zero, e.Data)
		if e.Offset != nil {
			fmt.Fprintf(&b, `, "offset": %d`, *e.Offset)
		}
		b.WriteString("}")
	}
	b.WriteString("]\n")
	_, err := io.WriteString(w, b.String())
	return err
}
