// Package boundary is the go/analysis checker that keeps Kelpie's
// simulation boundary structural.
//
// Simulated code runs as a wasip1 program under the executor, where every
// input comes from the seed. It may only reach the world through interfaces
// whose simulated implementations are in memory: a net.Listener or dial func
// (simnet), a KV store, a VM. The checker rejects the calls that bypass
// those interfaces — real sockets and the default HTTP client, processes
// (os/exec, os.StartProcess), raw syscalls and plugins — in every package
// except the adapters that own each boundary. Those exemptions live in one
// file, allow.go, one line per package pattern with its reason; there are no
// inline suppressions, so the complete list of escapes is reviewable in one
// place. Test files may use real loopback sockets (integration tests run
// real components), except inside TestSim* functions, which run simulated.
//
// Each finding names the call, the rule and the packages that own it:
//
//	kv/etcd/client.go:40:9: net.Dial opens a real socket [socket]; allowed only in cmd/kelpie, vm/qemu, vm/firecracker (internal/lint/boundary/allow.go); take a net.Listener or a dial func from the caller (simnet supplies them under simulation)
package boundary

import (
	"fmt"
	"go/ast"
	"go/types"
	"strconv"
	"strings"

	"golang.org/x/tools/go/analysis"
)

// Analyzer is the boundary checker, for singlechecker and go vet -vettool.
var Analyzer = &analysis.Analyzer{
	Name: "boundary",
	Doc: `reject code that escapes Kelpie's deterministic simulation

Rejects real sockets (net.Dial, net.Listen, http.ListenAndServe, ...), the
default HTTP client and transport, os/exec and os.StartProcess, functions
and variables of syscall and golang.org/x/sys/unix (their constants, such as
errno values, are fine), and plugin, outside the packages that
internal/lint/boundary/allow.go lists as owning each boundary. Test files
may use sockets and HTTP clients except inside TestSim* functions.

kelpie-lint -rules, -allowlist and -hostonly print the policy.`,
	URL: "https://github.com/kelpie-go/kelpie/tree/main/internal/lint/boundary",
	Run: run,
}

func run(pass *analysis.Pass) (any, error) {
	if err := validate(AllowList); err != nil {
		return nil, err
	}
	c := &checker{pass: pass, allowed: Allowed(pass.Pkg.Path())}
	for _, f := range pass.Files {
		name := pass.Fset.File(f.Pos()).Name()
		isTest := strings.HasSuffix(name, "_test.go")
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				continue // the type checker has already rejected the file
			}
			if b, ok := bannedImports[path]; ok {
				c.report(imp, isTest, false, fmt.Sprintf("import %q %s", path, b.does), b.rule)
			}
		}
		for _, decl := range f.Decls {
			inSim := isTest && isSimTest(decl)
			c.walk(decl, isTest, inSim)
		}
	}
	return nil, nil
}

// isSimTest reports whether decl is a TestSim* test function.
func isSimTest(decl ast.Decl) bool {
	fn, ok := decl.(*ast.FuncDecl)
	return ok && fn.Recv == nil && strings.HasPrefix(fn.Name.Name, SimTestPrefix)
}

type checker struct {
	pass    *analysis.Pass
	allowed map[Rule]bool
}

// walk reports every banned reference and fallback literal under n.
func (c *checker) walk(n ast.Node, isTest, inSim bool) {
	var visit func(ast.Node) bool
	visit = func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.SelectorExpr:
			// Report at the start of "net.Dial" rather than at "Dial",
			// and do not visit Sel again as a bare identifier; the
			// receiver side can hold its own (http.DefaultClient.Get).
			if name, b, ok := c.banned(n.Sel); ok {
				c.report(n, isTest, inSim, name+" "+b.does, b.rule)
				ast.Inspect(n.X, visit)
				return false
			}
		case *ast.Ident:
			// Dot imports: Dial with no qualifier.
			if name, b, ok := c.banned(n); ok {
				c.report(n, isTest, inSim, name+" "+b.does, b.rule)
			}
		case *ast.CompositeLit:
			c.checkLiteral(n, isTest, inSim)
		}
		return true
	}
	ast.Inspect(n, visit)
}

// banned returns the display name and ban of the object id refers to, and
// false when it is not banned.
func (c *checker) banned(id *ast.Ident) (string, banned, bool) {
	obj := c.pass.TypesInfo.Uses[id]
	if obj == nil || obj.Pkg() == nil {
		return "", banned{}, false
	}
	path := obj.Pkg().Path()
	var key string
	switch o := obj.(type) {
	case *types.Func:
		o = o.Origin()
		recv := o.Signature().Recv()
		if recv == nil {
			key = path + "." + o.Name()
			if syscallPackages[path] {
				return display(key), banned{Syscall, "makes a raw system call"}, true
			}
			break
		}
		t := recv.Type()
		if p, ok := t.(*types.Pointer); ok {
			t = p.Elem()
		}
		named, ok := types.Unalias(t).(*types.Named)
		if !ok {
			return "", banned{}, false // an interface method: the implementation decides
		}
		key = path + "." + named.Obj().Name() + "." + o.Name()
	case *types.Var:
		if o.IsField() || o.Parent() != o.Pkg().Scope() {
			return "", banned{}, false
		}
		key = path + "." + o.Name()
		if syscallPackages[path] {
			return display(key), banned{Syscall, "is raw operating-system state"}, true
		}
	default:
		return "", banned{}, false
	}
	b, ok := bannedObjects[key]
	return display(key), b, ok
}

// checkLiteral reports an http.Client or http.Transport literal that leaves
// out every field through which a dialer could be injected.
func (c *checker) checkLiteral(lit *ast.CompositeLit, isTest, inSim bool) {
	t := c.pass.TypesInfo.TypeOf(lit)
	if t == nil {
		return
	}
	named, ok := types.Unalias(t).(*types.Named)
	if !ok || named.Obj().Pkg() == nil {
		return
	}
	key := named.Obj().Pkg().Path() + "." + named.Obj().Name()
	fields, ok := dialFields[key]
	if !ok {
		return
	}
	for _, elt := range lit.Elts {
		kv, ok := elt.(*ast.KeyValueExpr)
		if !ok {
			return // positional literal: every field is set explicitly
		}
		if id, ok := kv.Key.(*ast.Ident); ok {
			for _, f := range fields {
				if id.Name == f {
					return
				}
			}
		}
	}
	short := display(key)
	does := fmt.Sprintf("%s literal without %s dials real sockets", short, strings.Join(fields, " or "))
	if key == "net/http.Client" {
		does = short + " literal without Transport uses http.DefaultTransport, which dials real sockets"
	}
	c.report(lit, isTest, inSim, does, HTTPDefault)
}

// report emits one diagnostic unless the package or the test-file policy
// allows rule.
func (c *checker) report(n ast.Node, isTest, inSim bool, what string, rule Rule) {
	if c.allowed[rule] {
		return
	}
	if isTest && !inSim && testFileAllows(rule) {
		return
	}
	owners := Owners(rule)
	where := "allowed in no package"
	if len(owners) > 0 {
		where = "allowed only in " + strings.Join(owners, ", ")
	}
	if inSim {
		where += "; TestSim* functions run simulated, so test files' exemption does not apply"
	}
	c.pass.Report(analysis.Diagnostic{
		Pos:      n.Pos(),
		End:      n.End(),
		Category: string(rule),
		Message:  fmt.Sprintf("%s [%s]; %s (internal/lint/boundary/allow.go); %s", what, rule, where, advice[rule]),
	})
}

func testFileAllows(rule Rule) bool {
	for _, r := range TestFileAllow {
		if r == rule {
			return true
		}
	}
	return false
}
