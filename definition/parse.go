package definition

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/meridian-run/meridian/api"
)

// MaxDocumentSize is the largest definition or catalogue document, in bytes,
// that Parse and ParseCatalogue accept.
const MaxDocumentSize = 1 << 20

// Parse decodes a deployment definition written in YAML or JSON. It reports,
// all at once and each with its field path, unknown fields, wrong types and
// wrong shapes, and decodes into the definition only when there are none. A
// malformed document gives one error with the parser's line information.
// Every error returned is of type Errors. Parse does not validate the
// definition's content: call Validate for that.
func Parse(data []byte) (api.Definition, error) {
	var def api.Definition
	if err := decodeStrict(data, "definition", &def); err != nil {
		return api.Definition{}, err
	}
	return def, nil
}

// decodeStrict parses data as a single YAML (or JSON) document, walks it
// against the type out points to, and decodes it into out when the walk
// found no errors. what names the document in messages.
func decodeStrict(data []byte, what string, out any) error {
	root, err := parseDocument(data, what)
	if err != nil {
		return err
	}
	w := walker{fields: map[reflect.Type]map[string]int{}}
	w.walk(root, reflect.TypeOf(out).Elem(), "")
	if err := w.errs.err(); err != nil {
		return err
	}
	if err := root.Decode(out); err != nil {
		return Errors{{Message: fmt.Sprintf("decode the %s: %v", what, err)}}
	}
	return nil
}

// parseDocument returns the root node of the single document in data.
func parseDocument(data []byte, what string) (*yaml.Node, error) {
	if len(data) > MaxDocumentSize {
		return nil, Errors{{Message: fmt.Sprintf("the %s is %d bytes, more than the limit of %d", what, len(data), MaxDocumentSize)}}
	}
	if looksLikeJSON(data) {
		return parseJSON(data)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, Errors{{Message: "the " + what + " is empty"}}
		}
		return nil, Errors{{Message: "invalid YAML: " + withLine(err.Error())}}
	}
	var next yaml.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		return nil, Errors{{Message: "the " + what + " must be a single YAML document"}}
	}
	if len(doc.Content) != 1 || isNull(doc.Content[0]) {
		return nil, Errors{{Message: "the " + what + " is empty"}}
	}
	return doc.Content[0], nil
}

// withLine adds the line to a YAML parser message that has none: the parser
// leaves it out for errors on the first line.
func withLine(msg string) string {
	if rest, ok := strings.CutPrefix(msg, "yaml: "); ok && !strings.HasPrefix(rest, "line ") {
		return "yaml: line 1: " + rest
	}
	return msg
}

// walker checks a YAML node tree against a Go type, by reflection, using the
// types' json tag names as field names.
type walker struct {
	errs   collector
	fields map[reflect.Type]map[string]int // json name -> field index, per struct type
}

// walk checks n against type t at path.
func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind == yaml.AliasNode {
		w.errs.add(path, "YAML aliases are not supported")
		return
	}
	if !supportedTag(n) {
		w.errs.add(path, "unsupported YAML tag %s", n.Tag)
		return
	}
	if isNull(n) {
		return // null is the zero value of any field
	}
	switch t.Kind() {
	case reflect.Pointer:
		w.walk(n, t.Elem(), path)
	case reflect.Struct:
		w.mapping(n, t, path)
	case reflect.Slice:
		w.sequence(n, t.Elem(), path)
	case reflect.String:
		w.want(n, yaml.ScalarNode, "a string", path)
	case reflect.Int:
		w.integer(n, path)
	default:
		panic("definition: no decoding rule for " + t.String())
	}
}

// mapping checks n against struct type t.
func (w *walker) mapping(n *yaml.Node, t reflect.Type, path string) {
	if !w.want(n, yaml.MappingNode, "a mapping", path) {
		return
	}
	fields := w.fieldsOf(t)
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, value := n.Content[i], n.Content[i+1]
		if key.Kind != yaml.ScalarNode {
			w.errs.add(path, "field names must be plain strings (line %d)", key.Line)
			continue
		}
		fpath := field(path, fieldName(key.Value))
		if line, dup := seen[key.Value]; dup {
			w.errs.add(fpath, "duplicate field (first set on line %d)", line)
			continue
		}
		seen[key.Value] = key.Line
		idx, known := fields[key.Value]
		if !known {
			w.errs.add(fpath, "unknown field")
			continue
		}
		w.walk(value, t.Field(idx).Type, fpath)
	}
}

// sequence checks n against a list of elem.
func (w *walker) sequence(n *yaml.Node, elem reflect.Type, path string) {
	if !w.want(n, yaml.SequenceNode, "a list", path) {
		return
	}
	for i, item := range n.Content {
		w.walk(item, elem, at(path, i))
	}
}

// integer checks that n is an integer that fits an int.
func (w *walker) integer(n *yaml.Node, path string) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		w.errs.add(path, "want an integer, got %s", describe(n))
		return
	}
	var i int
	if err := n.Decode(&i); err != nil {
		w.errs.add(path, "integer %s is out of range", n.Value)
	}
}

// want reports n unless it is of kind k; desc names what was wanted.
func (w *walker) want(n *yaml.Node, k yaml.Kind, desc, path string) bool {
	if n.Kind == k {
		return true
	}
	w.errs.add(path, "want %s, got %s", desc, describe(n))
	return false
}

// fieldsOf maps the json names of struct type t's fields to their indexes.
func (w *walker) fieldsOf(t reflect.Type) map[string]int {
	if m, ok := w.fields[t]; ok {
		return m
	}
	m := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = i
	}
	w.fields[t] = m
	return m
}

// supportedTag reports whether n carries one of the standard tags of its
// kind (no !!binary, !!merge or application tags).
func supportedTag(n *yaml.Node) bool {
	switch n.Kind {
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str", "!!int", "!!float", "!!bool", "!!null", "!!timestamp":
			return true
		}
	case yaml.MappingNode:
		return n.ShortTag() == "!!map"
	case yaml.SequenceNode:
		return n.ShortTag() == "!!seq"
	}
	return false
}

// isNull reports whether n is a null scalar ("", "~", "null").
func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names n's type (and short value) for "got ..." messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.AliasNode:
		return "alias"
	}
	switch n.ShortTag() {
	case "!!str":
		return "string " + strconv.Quote(Truncate(n.Value))
	case "!!int":
		return "integer " + Truncate(n.Value)
	case "!!float":
		return "float " + Truncate(n.Value)
	case "!!bool":
		return "boolean " + Truncate(n.Value)
	case "!!null":
		return "null"
	case "!!timestamp":
		return "timestamp " + Truncate(n.Value)
	}
	return n.ShortTag() + " " + strconv.Quote(Truncate(n.Value))
}

// Truncate shortens a caller's value for a message: at most 40
// characters, then "…".
func Truncate(s string) string {
	const max = 40
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	return string([]rune(s)[:max]) + "…"
}

// fieldName renders a mapping key for a path, quoting it unless it is made
// of letters, digits, '_' and '-'.
func fieldName(key string) string {
	if key == "" || strings.IndexFunc(key, notNameRune) >= 0 {
		return strconv.Quote(Truncate(key))
	}
	return key
}

func notNameRune(r rune) bool {
	return !(r == '_' || r == '-' || '0' <= r && r <= '9' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z')
}
