package driver

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// Log lines are "<time> <stream> <text>\n": time in UTC with nanoseconds and
// fixed width (so lines sort as text), stream "stdout" or "stderr", and text
// one line of output without its newline. Lines longer than maxLineBytes are
// split; a partial line is written once it has waited partialLineWait.
const (
	logTimeFormat = "2006-01-02T15:04:05.000000000Z"
	maxLineBytes  = 16 << 10
)

var partialLineWait = time.Second // a variable for tests

// LogEntry is one parsed log line.
type LogEntry struct {
	// Time is when the shim read the line.
	Time time.Time
	// Stream is "stdout" or "stderr".
	Stream string
	// Text is the line without its newline.
	Text string
}

// ParseLogLine parses one line of an instance log (with or without its
// trailing newline).
func ParseLogLine(line []byte) (LogEntry, error) {
	line = bytes.TrimSuffix(line, []byte{'\n'})
	ts, rest, ok := bytes.Cut(line, []byte{' '})
	if !ok {
		return LogEntry{}, fmt.Errorf("log line %q: no stream", line)
	}
	t, err := time.Parse(logTimeFormat, string(ts))
	if err != nil {
		return LogEntry{}, fmt.Errorf("log line %q: time: %w", line, err)
	}
	stream, text, _ := bytes.Cut(rest, []byte{' '})
	if s := string(stream); s != "stdout" && s != "stderr" {
		return LogEntry{}, fmt.Errorf("log line %q: unknown stream %q", line, s)
	}
	return LogEntry{Time: t, Stream: string(stream), Text: string(text)}, nil
}

// rotatingLog appends log lines to path, moving it to path+".1" (replacing
// the previous one) before a line would make it exceed max bytes. The log
// thus never takes more than 2*max bytes.
type rotatingLog struct {
	mu   sync.Mutex
	path string
	max  int64
	f    *os.File
	size int64
	buf  []byte
}

func openRotatingLog(path string, max int64) (*rotatingLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open log: %w", err)
	}
	l := &rotatingLog{path: path, max: max, f: f, size: fi.Size()}
	if l.size > max {
		if err := l.rotate(); err != nil {
			f.Close()
			return nil, err
		}
	}
	return l, nil
}

// writeLine writes one entry stamped with the current time (taken under the
// lock, so times never go backwards in the file); text must not contain a
// newline.
func (l *rotatingLog) writeLine(stream string, text []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return errors.New("log closed")
	}
	b := time.Now().UTC().AppendFormat(l.buf[:0], logTimeFormat)
	b = append(b, ' ')
	b = append(b, stream...)
	b = append(b, ' ')
	room := int(l.max) - len(b) - 1
	if room < 0 {
		room = 0
	}
	if len(text) > room {
		text = text[:room]
	}
	b = append(b, text...)
	b = append(b, '\n')
	l.buf = b[:0]
	if l.size > 0 && l.size+int64(len(b)) > l.max {
		if err := l.rotate(); err != nil {
			return err
		}
	}
	n, err := l.f.Write(b)
	l.size += int64(n)
	if err != nil {
		return fmt.Errorf("write log: %w", err)
	}
	return nil
}

func (l *rotatingLog) rotate() error {
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return fmt.Errorf("rotate log: %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("rotate log: %w", err)
	}
	l.f.Close()
	l.f = f
	l.size = 0
	return nil
}

func (l *rotatingLog) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// copyLines reads r (a pipe) until EOF and writes its lines to l under
// stream. A partial line is flushed after partialLineWait without more
// input, and lines are split at maxLineBytes.
func copyLines(l *rotatingLog, stream string, r *os.File) {
	buf := make([]byte, 0, maxLineBytes)
	chunk := make([]byte, 4096)
	flush := func() {
		if len(buf) > 0 {
			_ = l.writeLine(stream, buf)
			buf = buf[:0]
		}
	}
	for {
		if len(buf) > 0 {
			_ = r.SetReadDeadline(time.Now().Add(partialLineWait))
		} else {
			_ = r.SetReadDeadline(time.Time{})
		}
		n, err := r.Read(chunk)
		data := chunk[:n]
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				take := min(len(data), maxLineBytes-len(buf))
				buf = append(buf, data[:take]...)
				data = data[take:]
				if len(buf) == maxLineBytes {
					flush()
				}
				continue
			}
			if len(buf)+i > maxLineBytes {
				take := maxLineBytes - len(buf)
				buf = append(buf, data[:take]...)
				data = data[take:]
				flush()
				continue
			}
			if len(buf) == 0 {
				_ = l.writeLine(stream, data[:i])
			} else {
				buf = append(buf, data[:i]...)
				flush()
			}
			data = data[i+1:]
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				flush()
				continue
			}
			flush()
			return
		}
	}
}
