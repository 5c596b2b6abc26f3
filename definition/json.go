package definition

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"
)

// looksLikeJSON reports whether data is a JSON object rather than a YAML
// document: its first token is "{" followed by a quoted key or "}". (A YAML
// flow mapping such as "{name: web}" has an unquoted key.)
func looksLikeJSON(data []byte) bool {
	rest, ok := bytes.CutPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte("{"))
	rest = bytes.TrimLeft(rest, " \t\r\n")
	return ok && len(rest) > 0 && (rest[0] == '"' || rest[0] == '}')
}

// parseJSON parses a JSON document into a YAML node tree, so that JSON gets
// exact JSON semantics (escapes, numbers) and errors with line and column,
// while the rest of the decoder works on one representation.
func parseJSON(data []byte) (*yaml.Node, error) {
	p := &jsonParser{data: data, dec: json.NewDecoder(bytes.NewReader(data)), line: 1}
	p.dec.UseNumber()
	root, err := p.value()
	if err == nil {
		end := p.dec.InputOffset()
		if _, extra := p.dec.Token(); !errors.Is(extra, io.EOF) {
			end += int64(len(p.data[end:]) - len(bytes.TrimLeft(p.data[end:], " \t\r\n")))
			err = &offsetError{off: end, msg: "want one JSON value, found more after it"}
		}
	}
	if err != nil {
		return nil, p.syntaxError(err)
	}
	return root, nil
}

// maxJSONDepth bounds the nesting of JSON documents, as the YAML parser
// bounds YAML's.
const maxJSONDepth = 10000

// jsonParser builds a yaml.Node tree from JSON tokens.
type jsonParser struct {
	data  []byte
	dec   *json.Decoder
	off   int64 // offset up to which line is counted
	line  int   // line of off, from 1
	depth int   // objects and arrays open
}

// value parses the next JSON value.
func (p *jsonParser) value() (*yaml.Node, error) {
	tok, err := p.dec.Token()
	if err != nil {
		return nil, err
	}
	return p.node(tok)
}

// node builds the node that starts with tok.
func (p *jsonParser) node(tok json.Token) (*yaml.Node, error) {
	n := &yaml.Node{Line: p.lineAt(p.dec.InputOffset())}
	switch tok := tok.(type) {
	case json.Delim:
		if p.depth++; p.depth > maxJSONDepth {
			return nil, &offsetError{off: p.dec.InputOffset() - 1, msg: fmt.Sprintf("nesting deeper than %d levels", maxJSONDepth)}
		}
		defer func() { p.depth-- }()
		if tok == '{' {
			n.Kind, n.Tag = yaml.MappingNode, "!!map"
		} else {
			n.Kind, n.Tag = yaml.SequenceNode, "!!seq"
		}
		return n, p.children(n)
	case string:
		n.Kind, n.Tag, n.Value, n.Style = yaml.ScalarNode, "!!str", tok, yaml.DoubleQuotedStyle
	case json.Number:
		n.Kind, n.Tag, n.Value = yaml.ScalarNode, "!!int", tok.String()
		if strings.ContainsAny(n.Value, ".eE") {
			n.Tag = "!!float"
		}
	case bool:
		n.Kind, n.Tag, n.Value = yaml.ScalarNode, "!!bool", fmt.Sprint(tok)
	case nil:
		n.Kind, n.Tag, n.Value = yaml.ScalarNode, "!!null", "null"
	}
	return n, nil
}

// children parses the members of the object or array n up to its closing
// delimiter. Object keys become string scalar nodes.
func (p *jsonParser) children(n *yaml.Node) error {
	for p.dec.More() {
		child, err := p.value()
		if err != nil {
			return err
		}
		n.Content = append(n.Content, child)
	}
	_, err := p.dec.Token() // the closing delimiter
	return err
}

// lineAt returns the line (from 1) of offset off, which never decreases
// between calls.
func (p *jsonParser) lineAt(off int64) int {
	off = min(off, int64(len(p.data)))
	if off > p.off {
		p.line += bytes.Count(p.data[p.off:off], []byte("\n"))
		p.off = off
	}
	return p.line
}

// offsetError is a JSON error at a byte offset.
type offsetError struct {
	off int64
	msg string
}

func (e *offsetError) Error() string { return e.msg }

// syntaxError renders err with its line and column.
func (p *jsonParser) syntaxError(err error) error {
	off := int64(len(p.data))
	var se *json.SyntaxError
	var oe *offsetError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &oe):
		off = oe.off
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		err = errors.New("unexpected end of JSON input")
	}
	off = min(off, int64(len(p.data)))
	line := 1 + bytes.Count(p.data[:off], []byte("\n"))
	col := off - int64(bytes.LastIndexByte(p.data[:off], '\n'))
	return Errors{{Message: fmt.Sprintf("invalid JSON: line %d, column %d: %v", line, col, err)}}
}
