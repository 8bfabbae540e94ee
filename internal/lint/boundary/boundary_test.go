package boundary

import (
	"go/types"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/tools/go/analysis/analysistest"
	"golang.org/x/tools/go/packages"
)

// TestAnalyzer runs the checker over testdata/src, whose packages carry
// the real module's import paths so the real allow-list applies: each
// `// want` comment is a diagnostic that must appear, and every line
// without one must stay silent.
func TestAnalyzer(t *testing.T) {
	analysistest.Run(t, analysistest.TestData(), Analyzer,
		Module+"/simpkg",
		Module+"/cmd/tool",
		Module+"/vm/image",
		Module+"/vm/qemu/qmp",
		Module+"/internal/lint/fake",
		Module+"/cmdline",
		"example.com/other/cmd/x",
	)
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, path string
		want          bool
	}{
		{"cmd/...", Module + "/cmd", true},
		{"cmd/...", Module + "/cmd/kelpie", true},
		{"cmd/...", Module + "/cmd/kelpie/sub", true},
		{"cmd/...", Module + "/cmdline", false},
		{"cmd/...", "example.com/other/cmd/kelpie", false},
		{"vm/qemu", Module + "/vm/qemu", true},
		{"vm/qemu", Module + "/vm/qemu/qmp", false},
		{"vm/qemu", Module + "/vm/qemux", false},
		{"vm/qemu", Module + "/vm/qemu_test", true},
		{"vm/qemu", Module + "/vm", false},
		{"internal/lint/...", Module + "/internal/lint/boundary", true},
		{"internal/lint/...", Module + "/internal/linter", false},
	} {
		if got := Match(tc.pattern, tc.path); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.path, got, tc.want)
		}
	}
}

func TestAllowedAndHostOnly(t *testing.T) {
	got := Allowed(Module + "/cmd/kelpie-guest")
	want := map[Rule]bool{Socket: true, Exec: true, Syscall: true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Allowed(cmd/kelpie-guest) = %v, want %v", got, want)
	}
	// A binary that is itself a simulated program gets nothing.
	if got := Allowed(Module + "/cmd/kelpie-scenarios"); len(got) != 0 {
		t.Errorf("Allowed(cmd/kelpie-scenarios) = %v, want nothing", got)
	}
	if got := Allowed(Module + "/kv"); len(got) != 0 {
		t.Errorf("Allowed(kv) = %v, want nothing", got)
	}
	for path, want := range map[string]bool{
		Module + "/vm/qemu":                true,
		Module + "/internal/lint/boundary": true,
		Module + "/cmd/kelpie-dst":         true,
		Module + "/cmd/kelpie":             true,
		Module + "/cmd/kelpie-scenarios":   false, // a binary, and a wasip1 program
		Module + "/cmd/kelpie-new":         false, // checked until the allow-list says otherwise
		Module + "/sim":                    false,
		Module + "/vm":                     false,
	} {
		if got := HostOnly(path); got != want {
			t.Errorf("HostOnly(%s) = %v, want %v", path, got, want)
		}
	}
	patterns := HostOnlyPatterns()
	for _, p := range patterns {
		if !strings.HasPrefix(p, "./") {
			t.Errorf("host-only pattern %q is not a go list pattern relative to the module root", p)
		}
	}
	if !strings.Contains(strings.Join(patterns, " "), "./internal/lint/...") {
		t.Errorf("HostOnlyPatterns() = %v, want it to include ./internal/lint/...", patterns)
	}
}

func TestValidate(t *testing.T) {
	if err := validate(AllowList); err != nil {
		t.Fatalf("the allow-list itself is invalid: %v", err)
	}
	for _, tc := range []struct {
		name  string
		entry Entry
		want  string
	}{
		{"leading dot", Entry{Pattern: "./cmd/...", Allow: []Rule{Exec}, Why: "x"}, "module-relative"},
		{"absolute", Entry{Pattern: "/cmd", Allow: []Rule{Exec}, Why: "x"}, "module-relative"},
		{"empty", Entry{Pattern: "", Allow: []Rule{Exec}, Why: "x"}, "module-relative"},
		{"inner dots", Entry{Pattern: "cmd/.../x", Allow: []Rule{Exec}, Why: "x"}, "module-relative"},
		{"no reason", Entry{Pattern: "kv", Allow: []Rule{Exec}}, "Why is empty"},
		{"grants nothing", Entry{Pattern: "kv", Why: "x"}, "grants nothing"},
		{"unknown rule", Entry{Pattern: "kv", Allow: []Rule{"sockets"}, Why: "x"}, `unknown rule "sockets"`},
	} {
		err := validate([]Entry{tc.entry})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: validate = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	dup := []Entry{{Pattern: "kv", Allow: []Rule{Exec}, Why: "x"}, {Pattern: "kv", Allow: []Rule{Socket}, Why: "y"}}
	if err := validate(dup); err == nil || !strings.Contains(err.Error(), "appears twice") {
		t.Errorf("validate(duplicate) = %v, want an error naming the duplicate", err)
	}
}

// TestBannedNamesExist loads the standard packages the tables name and
// checks that every entry is a real function, method or variable of the
// kind its key says, so a typo cannot silently ban nothing.
func TestBannedNamesExist(t *testing.T) {
	paths := map[string]bool{}
	for key := range bannedObjects {
		paths[pkgOf(key)] = true
	}
	for key := range dialFields {
		paths[pkgOf(key)] = true
	}
	var list []string
	for p := range paths {
		list = append(list, p)
	}
	pkgs, err := packages.Load(&packages.Config{Mode: packages.NeedName | packages.NeedTypes}, list...)
	if err != nil {
		t.Fatalf("loading %v: %v", list, err)
	}
	byPath := map[string]*types.Package{}
	for _, p := range pkgs {
		if len(p.Errors) > 0 {
			t.Fatalf("loading %s: %v", p.PkgPath, p.Errors)
		}
		byPath[p.PkgPath] = p.Types
	}
	for key := range bannedObjects {
		pkg := byPath[pkgOf(key)]
		names := strings.Split(strings.TrimPrefix(key, pkgOf(key)+"."), ".")
		obj := pkg.Scope().Lookup(names[0])
		switch {
		case obj == nil:
			t.Errorf("%s: %s.%s does not exist", key, pkg.Path(), names[0])
		case len(names) == 2:
			m, _, _ := types.LookupFieldOrMethod(types.NewPointer(obj.Type()), true, pkg, names[1])
			if _, ok := m.(*types.Func); !ok {
				t.Errorf("%s: %s has no method %s", key, names[0], names[1])
			}
		default:
			switch obj.(type) {
			case *types.Func, *types.Var:
			default:
				t.Errorf("%s is a %T, want a function or variable", key, obj)
			}
		}
	}
	for key, fields := range dialFields {
		pkg := byPath[pkgOf(key)]
		obj := pkg.Scope().Lookup(strings.TrimPrefix(key, pkgOf(key)+"."))
		if obj == nil {
			t.Errorf("%s does not exist", key)
			continue
		}
		for _, f := range fields {
			if v, _, _ := types.LookupFieldOrMethod(obj.Type(), false, pkg, f); v == nil {
				t.Errorf("%s has no field %s", key, f)
			}
		}
	}
}

// pkgOf returns the import path part of a table key: everything up to the
// first dot after the last slash.
func pkgOf(key string) string {
	slash := strings.LastIndex(key, "/")
	return key[:slash+1+strings.Index(key[slash+1:], ".")]
}

func TestDisplay(t *testing.T) {
	for key, want := range map[string]string{
		"net.Dial":                       "net.Dial",
		"net.Dialer.DialContext":         "(net.Dialer).DialContext",
		"net/http.Server.ListenAndServe": "(http.Server).ListenAndServe",
		"crypto/tls.Dial":                "tls.Dial",
	} {
		if got := display(key); got != want {
			t.Errorf("display(%q) = %q, want %q", key, got, want)
		}
	}
}
