// Module hooks for a fuzzing process (registered by register.mjs): they load the tree's TypeScript straight from
// source with the TypeScript compiler, and add coverage probes to the files under test.
//
// Why our own: the maintained coverage-guided fuzzer for Node (@jazzer.js) does not run on this machine (its prebuilt
// addon needs glibc 2.38, its sources need a patched libFuzzer fetched from GitHub). What it gives - edge feedback from
// the JavaScript under test - is a probe on every branch arm, which the TypeScript compiler's own transformer API
// inserts here (the same API tsc emits with, so the probed code is the code that ships, only with counters).
//
// A probe is `__fc[ID]++` on a Uint8Array the fuzzer owns (globalThis.__smFuzzCov): at every function entry, on both
// arms of if / ?: / && / || / ??, in every loop body, case and catch. Counts are bucketed by the engine (AFL's hit
// count classes), so "this loop ran 4-7 times" is new coverage too.
import ts from 'typescript';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { relative } from 'node:path';

/** Must match engine.ts: ids wrap at this size (a collision only merges two probes' feedback). */
const MAP_SIZE = 1 << 18;

let root = '';
let rootUrl = '';
/** repo-relative path prefixes whose code gets probes (the rest of the tree loads plain) */
let instrumentPrefixes = [];
let nextId = 1;

export function initialize(data) {
  root = data.root;
  rootUrl = pathToFileURL(root).href + '/';
  instrumentPrefixes = data.instrument ?? [];
}

const inTree = (url) => url.startsWith(rootUrl) && !url.includes('/node_modules/');

export async function resolve(specifier, context, nextResolve) {
  // The tree's imports name './x.js' for x.ts (NodeNext style): find the .ts when there is no .js.
  if (context.parentURL && inTree(context.parentURL) && specifier.startsWith('.') && specifier.endsWith('.js')) {
    const url = new URL(specifier, context.parentURL);
    if (!existsSync(fileURLToPath(url))) {
      const ts = new URL(specifier.slice(0, -3) + '.ts', context.parentURL);
      if (existsSync(fileURLToPath(ts))) return { url: ts.href, format: 'module', shortCircuit: true };
    }
  }
  return nextResolve(specifier, context);
}

export async function load(url, context, nextLoad) {
  if (!(inTree(url) && url.endsWith('.ts'))) return nextLoad(url, context);
  const file = fileURLToPath(url);
  const rel = relative(root, file);
  const text = readFileSync(file, 'utf8');
  const probe = instrumentPrefixes.some((p) => rel.startsWith(p));
  const first = nextId;
  const out = ts.transpileModule(text, {
    fileName: file,
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, sourceMap: false, inlineSourceMap: false, esModuleInterop: true },
    transformers: probe ? { before: [coverageTransformer] } : undefined,
  });
  let source = out.outputText;
  if (probe) {
    // One line, so that stack traces of the probed file stay within a line of the source's.
    source = `const __fc = (globalThis.__smFuzzCov ??= new Uint8Array(${MAP_SIZE})); globalThis.__smFuzzMax = Math.max(globalThis.__smFuzzMax ?? 0, ${Math.min(nextId, MAP_SIZE)}); (globalThis.__smFuzzFiles ??= []).push([${JSON.stringify(rel)}, ${first}, ${nextId}]);` + source;
  }
  return { format: 'module', source, shortCircuit: true };
}

/** The probing transformer (runs before TypeScript erases types: it only adds statements and comma expressions). */
function coverageTransformer(ctx) {
  const f = ctx.factory;
  const probe = () => f.createPostfixIncrement(f.createElementAccessExpression(f.createIdentifier('__fc'), f.createNumericLiteral((nextId++) % MAP_SIZE)));
  const probeStmt = () => f.createExpressionStatement(probe());
  const wrapStmt = (s) => f.createBlock([probeStmt(), s], true);
  const wrapExpr = (e) => f.createParenthesizedExpression(f.createComma(probe(), e));
  const prepend = (block) => f.updateBlock(block, [probeStmt(), ...block.statements]);

  const visit = (node) => {
    if (ts.isTypeNode(node) || ts.isInterfaceDeclaration(node) || ts.isTypeAliasDeclaration(node)) return node;
    if (ts.isIfStatement(node)) {
      const then = wrapStmt(visit(node.thenStatement));
      const otherwise = node.elseStatement ? wrapStmt(visit(node.elseStatement)) : f.createBlock([probeStmt()], true);
      return f.updateIfStatement(node, visit(node.expression), then, otherwise);
    }
    if (ts.isCaseClause(node)) return f.updateCaseClause(node, visit(node.expression), [probeStmt(), ...node.statements.map(visit)]);
    if (ts.isDefaultClause(node)) return f.updateDefaultClause(node, [probeStmt(), ...node.statements.map(visit)]);
    if (ts.isFunctionLike(node) && node.body && !ts.isConstructorDeclaration(node)) {
      // (a constructor's entry is left alone: a statement before super() is not allowed everywhere)
      const body = node.body;
      return ts.visitEachChild(node, (c) => {
        if (c !== body) return visit(c);
        return ts.isBlock(c) ? prepend(visit(c)) : wrapExpr(visit(c));
      }, ctx);
    }
    if (ts.isIterationStatement(node, false)) {
      const body = node.statement;
      return ts.visitEachChild(node, (c) => (c === body ? wrapStmt(visit(c)) : visit(c)), ctx);
    }
    if (ts.isCatchClause(node)) {
      const block = node.block;
      return ts.visitEachChild(node, (c) => (c === block ? prepend(visit(c)) : visit(c)), ctx);
    }
    if (ts.isConditionalExpression(node)) {
      const a = node.whenTrue, b = node.whenFalse;
      return ts.visitEachChild(node, (c) => (c === a || c === b ? wrapExpr(visit(c)) : visit(c)), ctx);
    }
    if (ts.isBinaryExpression(node)) {
      const k = node.operatorToken.kind;
      if (k === ts.SyntaxKind.AmpersandAmpersandToken || k === ts.SyntaxKind.BarBarToken || k === ts.SyntaxKind.QuestionQuestionToken) {
        const right = node.right;
        return ts.visitEachChild(node, (c) => (c === right ? wrapExpr(visit(c)) : visit(c)), ctx);
      }
    }
    return ts.visitEachChild(node, visit, ctx);
  };
  return (sf) => ts.visitNode(sf, visit);
}
