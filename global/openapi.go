package global

import (
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// openAPI builds the OpenAPI 3 document from the route table, with the
// schemas of request and response bodies reflected from the api types.
func (s *Server) openAPI() map[string]any {
	schemas := map[string]any{}
	g := &schemaGen{defs: schemas}
	errRef := g.ref(reflect.TypeFor[apiErrorDoc]())
	paths := map[string]any{}
	paramRe := regexp.MustCompile(`\{([a-z_]+)\}`)
	for _, rt := range s.routes() {
		op := map[string]any{"operationId": rt.ID, "summary": rt.Summary}
		var params []any
		for _, m := range paramRe.FindAllStringSubmatch(rt.Path, -1) {
			params = append(params, map[string]any{"name": m[1], "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
		}
		if strings.HasPrefix(rt.ID, "list") {
			params = append(params,
				map[string]any{"name": "limit", "in": "query", "schema": map[string]any{"type": "integer", "minimum": 1, "maximum": 500}},
				map[string]any{"name": "page_token", "in": "query", "schema": map[string]any{"type": "string"}})
		}
		if rt.Idempotent {
			params = append(params, map[string]any{"name": "Idempotency-Key", "in": "header",
				"description": fmt.Sprintf("A retried request with the same key replays the first answer instead of creating again, for %s; past that the key is used anew.", shortDuration(s.cfg.IdempotencyTTL)),
				"schema":      map[string]any{"type": "string", "maxLength": 255}})
		}
		if params != nil {
			op["parameters"] = params
		}
		if rt.Auth != authNone {
			op["security"] = []any{map[string]any{"bearer": []any{}}}
		}
		if rt.Request != nil {
			content := map[string]any{"application/json": map[string]any{"schema": g.ref(rt.Request)}}
			if rt.RequestYAML {
				content["application/yaml"] = map[string]any{"schema": g.ref(rt.Request)}
			}
			op["requestBody"] = map[string]any{"required": true, "content": content}
		}
		responses := map[string]any{}
		ok := map[string]any{"description": http.StatusText(rt.Status)}
		if rt.Response != nil {
			ok["content"] = map[string]any{"application/json": map[string]any{"schema": g.ref(rt.Response)}}
		} else if rt.Status != http.StatusNoContent {
			ok["content"] = map[string]any{"application/json": map[string]any{"schema": map[string]any{"type": "object"}}}
		}
		responses[strconv.Itoa(rt.Status)] = ok
		for _, code := range append([]int{http.StatusInternalServerError}, rt.Errors...) {
			responses[strconv.Itoa(code)] = map[string]any{"description": http.StatusText(code),
				"content": map[string]any{"application/json": map[string]any{"schema": errRef}}}
		}
		op["responses"] = responses
		item, _ := paths[rt.Path].(map[string]any)
		if item == nil {
			item = map[string]any{}
			paths[rt.Path] = item
		}
		item[strings.ToLower(rt.Method)] = op
	}
	return map[string]any{
		"openapi": "3.0.3",
		"info": map[string]any{"title": "Meridian global API", "version": "1",
			"description": "The public API of Meridian's global control plane. Errors are JSON {code, message, fields}."},
		"paths": paths,
		"components": map[string]any{
			"schemas":         schemas,
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer"}},
		},
	}
}

// apiErrorDoc documents the error body (api.Error hides its status).
type apiErrorDoc struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Fields  []struct {
		Path    string `json:"path"`
		Message string `json:"message"`
	} `json:"fields,omitempty"`
}

// schemaGen reflects JSON schemas of Go types into components/schemas.
type schemaGen struct {
	defs map[string]any
}

var timeType = reflect.TypeFor[time.Time]()

func schemaName(t reflect.Type) string {
	n := t.Name()
	if t == reflect.TypeFor[apiErrorDoc]() {
		return "Error"
	}
	// Generic instantiations such as List[api.App] become ListApp.
	if i := strings.IndexByte(n, '['); i >= 0 {
		inner := n[i+1 : len(n)-1]
		inner = inner[strings.LastIndexByte(inner, '.')+1:]
		n = n[:i] + inner
	}
	return n
}

// ref returns a schema for t, registering named structs as components.
func (g *schemaGen) ref(t reflect.Type) map[string]any {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == timeType {
		return map[string]any{"type": "string", "format": "date-time"}
	}
	if t.Kind() == reflect.Struct && t.Name() != "" {
		name := schemaName(t)
		if _, ok := g.defs[name]; !ok {
			g.defs[name] = map[string]any{} // placeholder for recursion
			g.defs[name] = g.schema(t)
		}
		return map[string]any{"$ref": "#/components/schemas/" + name}
	}
	return g.schema(t)
}

func (g *schemaGen) schema(t reflect.Type) map[string]any {
	switch t.Kind() {
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice, reflect.Array:
		return map[string]any{"type": "array", "items": g.ref(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": g.ref(t.Elem())}
	case reflect.Pointer:
		return g.ref(t.Elem())
	case reflect.Struct:
		props := map[string]any{}
		var required []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			tag := f.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			if name == "" {
				name = f.Name
			}
			if f.Anonymous && tag == "" {
				continue
			}
			props[name] = g.ref(f.Type)
			if !strings.Contains(opts, "omitempty") && f.Type.Kind() != reflect.Pointer {
				required = append(required, name)
			}
		}
		s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
		if len(required) > 0 {
			s["required"] = required
		}
		return s
	}
	return map[string]any{}
}
