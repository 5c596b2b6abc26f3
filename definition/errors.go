package definition

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/meridian-run/meridian/api"
)

// MaxErrors is the number of errors reported at most; when more are found,
// a last entry without a path says so.
const MaxErrors = 100

// Errors is a list of invalid fields, in document order where possible. Its
// Error method renders one "path: message" line per entry.
type Errors []api.FieldError

// Error renders one line per error, "path: message" (or just the message for
// errors about the whole document).
func (e Errors) Error() string {
	var b strings.Builder
	for i, f := range e {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(f.String())
	}
	return b.String()
}

// collector accumulates errors up to MaxErrors.
type collector struct {
	errs Errors
}

// add records an error at path; past MaxErrors it records one final notice
// and drops the rest.
func (c *collector) add(path, format string, args ...any) {
	switch {
	case len(c.errs) < MaxErrors:
		c.errs = append(c.errs, api.FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
	case len(c.errs) == MaxErrors:
		c.errs = append(c.errs, api.FieldError{Message: fmt.Sprintf("too many errors: only the first %d are shown", MaxErrors)})
	}
}

// err returns the collected Errors, or a nil error when there are none.
func (c *collector) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	return c.errs
}

// at renders the path of entry i of list, as in "env[2]".
func at(list string, i int) string {
	return list + "[" + strconv.Itoa(i) + "]"
}

// field renders the path of a field below parent, as in "strategy.type".
func field(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}
