package meshwire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// TestPreambleAndStatus: a preamble and each kind of answer read back as
// written; a stream that does not open with the magic, or ends early, is
// an error.
func TestPreambleAndStatus(t *testing.T) {
	var buf bytes.Buffer
	buf.Write(AppendPreamble(nil, "fra-web-7f3a", 8080))
	inst, port, err := ReadPreamble(&buf)
	if err != nil || inst != "fra-web-7f3a" || port != 8080 || buf.Len() != 0 {
		t.Fatalf("preamble read back as %q %d %v (%d bytes left)", inst, port, err, buf.Len())
	}
	if _, _, err := ReadPreamble(strings.NewReader("GET / HTTP/1.1\r\n")); err == nil || !strings.Contains(err.Error(), "not a mesh preamble") {
		t.Fatalf("HTTP as a preamble: %v", err)
	}
	if _, _, err := ReadPreamble(bytes.NewReader(AppendPreamble(nil, "abc", 1)[:6])); err == nil {
		t.Fatal("a cut preamble was read")
	}

	buf.Reset()
	WriteStatus(&buf, StatusOK, "ignored")
	if err := ReadStatus(&buf); err != nil || buf.Len() != 0 {
		t.Fatalf("OK read back as %v (%d bytes left)", err, buf.Len())
	}
	WriteStatus(&buf, StatusRefused, strings.Repeat("r", 300))
	var se *StatusError
	if err := ReadStatus(&buf); !errors.As(err, &se) || se.Code != StatusRefused || len(se.Reason) != 255 || buf.Len() != 0 {
		t.Fatalf("refusal read back as %v", err)
	}
	if err := ReadStatus(&buf); err == nil {
		t.Fatal("an answer was read from nothing")
	}
}
