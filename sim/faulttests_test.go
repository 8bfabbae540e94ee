//go:build !wasip1

package sim_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestEveryDeclaredFaultHasATest reads the whole module: for each
// sim.DeclareFault("boundary.what_it_is") it wants a test function named
// TestFaultWhatItIs or TestSimFaultWhatItIs (case aside) in the declaring
// package, the test that proves the fault fires and has its effect. A fault
// added without one fails here. (It reads source, so it runs natively only:
// under the executor the module root is not visible.)
func TestEveryDeclaredFaultHasATest(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	type pkg struct {
		faults []string        // declared fault names
		tests  map[string]bool // lower-cased test function names
	}
	pkgs := map[string]*pkg{}
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "testdata" || n == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		dir := filepath.Dir(path)
		p := pkgs[dir]
		if p == nil {
			p = &pkg{tests: map[string]bool{}}
			pkgs[dir] = p
		}
		if strings.HasSuffix(path, "_test.go") {
			for _, decl := range f.Decls {
				if fn, ok := decl.(*ast.FuncDecl); ok && fn.Recv == nil && strings.HasPrefix(fn.Name.Name, "Test") {
					p.tests[strings.ToLower(fn.Name.Name)] = true
				}
			}
			return nil
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "DeclareFault" {
				return true
			}
			if lit, ok := call.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if name, err := strconv.Unquote(lit.Value); err == nil {
					p.faults = append(p.faults, name)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for dir, p := range pkgs {
		for _, name := range p.faults {
			n++
			_, what, _ := strings.Cut(name, ".")
			want := "fault" + strings.ReplaceAll(what, "_", "")
			if !p.tests["test"+want] && !p.tests["testsim"+want] {
				rel, _ := filepath.Rel(root, dir)
				t.Errorf("fault %s (declared in %s) has no test named TestFault… or TestSimFault… for %q", name, rel, what)
			}
		}
	}
	if n < 20 {
		t.Errorf("found only %d declared faults in the module; the scan is broken", n)
	}
	t.Logf("%d declared faults, each with its test", n)
}
