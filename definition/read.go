package definition

import (
	"context"
	"fmt"
	"io"
	"os"
)

// ReadDocument reads a definition or catalogue document from path ("-" is
// standard input), at most MaxDocumentSize bytes: a regular file over the
// limit is refused before it is read, and any other source (a pipe, a
// device such as /dev/zero) is read no further than one byte past it. The
// read ends when ctx does (Ctrl-C), with ctx's error.
func ReadDocument(ctx context.Context, path string) ([]byte, error) {
	f := os.Stdin
	if path != "-" {
		var err error
		if f, err = os.Open(path); err != nil {
			return nil, err
		}
		defer f.Close()
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() > MaxDocumentSize {
			return nil, fmt.Errorf("%s is %d bytes, more than the limit of %d (1 MiB)", path, st.Size(), MaxDocumentSize)
		}
	}
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(io.LimitReader(f, MaxDocumentSize+1))
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, r.err
		}
		if len(r.b) > MaxDocumentSize {
			return nil, fmt.Errorf("%s is more than the limit of %d bytes (1 MiB)", path, MaxDocumentSize)
		}
		return r.b, nil
	case <-ctx.Done():
		// Closing a file ends a read blocked on it (pipes and FIFOs are
		// read through the poller); a read of standard input may stay
		// blocked, but nothing waits for it.
		if path != "-" {
			f.Close()
		}
		return nil, fmt.Errorf("reading %s: %w", path, ctx.Err())
	}
}
