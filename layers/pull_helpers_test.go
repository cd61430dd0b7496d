package layers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

type v1Platform = ocispec.Platform

func pitoa(n int) string { return strconv.Itoa(n) }

func fmtSscanf(s, f string, a ...any) (int, error) { return fmt.Sscanf(s, f, a...) }

func sha256hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
