"""Parser of the IR's text form: the inverse of :mod:`flashlight.ir.printer`.

``str(parse_program(str(p))) == str(p)`` for every program ``p``. The text is line based::

    program NAME(in: DTYPE[SHAPE], ...) -> (out: DTYPE[SHAPE], ...)
      buffer NAME: DTYPE[SHAPE]          # a global temporary
      local NAME: DTYPE[SHAPE]           # a temporary in registers
      for IT in LO:HI KIND[ tile N][ @MAPPING][ launch heaviest-first group G][ state [...]][ superseded [...]][ tiles [...]][ bounds [...]][ test [...]], IT2 in ...
        if COND
          NAME: TENSOR[INDICES] OP EXPR[ then * C][ rescale EXPR][ as dot over IT][ as nan fixup | as given | as library OP]

Indentation is two spaces per level; a ``for`` or ``if`` line opens a block (empty when no
deeper line follows, as the printer prints an empty body), and several comma-separated items
on one ``for`` line are perfectly nested loops, outermost first. Blank lines are ignored, and so
are comment lines, whose first non-blank characters are ``#`` or ``//`` (whole lines only: ``//``
inside a line is floor division); the printer prints none, so a round trip drops them.
Expressions use the printer's precedences, ``| < & < comparisons < + - < * / // % < unary``,
with left-associative binary operators and non-chainable comparisons.

Expressions are built with the builders of :mod:`flashlight.ir.expr`, as the printer's input
would have been: integer index arithmetic comes out in canonical affine form and a cast of a
literal, ``f16(0.5)``, is the typed literal ``Const(0.5, "f16")``. A minus sign directly before
a number is part of the literal. The parser does not check that the program is well formed
(undeclared tensors, unbound iterators, dtypes): run :func:`flashlight.ir.verify.verify` for that.

Errors are :class:`ParseError`\\ s that carry the 1-based line and column and say what was
expected and what was found.

.. autofunction:: parse_program
.. autofunction:: parse_expr
.. autoexception:: ParseError
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

from flashlight.ir import dtypes
from flashlight.ir.combiners import ASSIGN_OPS
from flashlight.ir.expr import (
    ARITY, BINARY_FUNCS, CASTS, INFIX, PREFIX, TERNARY_FUNCS, TILE_BOUNDS, UNARY_FUNCS, Call, Const, Expr,
    Iter, Load, call,
)
from flashlight.ir.lexer import ParseError, Token, tokenize
from flashlight.ir.loop_annotations import LoopAnnotationParser
from flashlight.ir.nodes import (
    LOOP_KINDS, MAPPINGS, Given, Guard, HeaviestFirst, LibraryCall, Loop, NanFixup, Node, Program, Stmt, TensorDecl,
)

__all__ = ["ParseError", "parse_expr", "parse_program"]

INDENT = 2  # spaces per nesting level


# {{{ operator tables

#: infix symbol -> (op, precedence), the inverse of the operator table
_INFIX_BY_SYMBOL = {sym: (op, prec) for op, (sym, prec) in INFIX.items()}
_PREFIX_BY_SYMBOL = {sym: op for op, (sym, _) in PREFIX.items()}
_FUNCTIONS = UNARY_FUNCS + BINARY_FUNCS + TERNARY_FUNCS + CASTS + TILE_BOUNDS
#: names that are literals unless followed by ``[`` (a load) or ``(``
_NAMED_LITERALS: dict[str, Const] = {
    "true": Const(True, dtypes.BOOL), "false": Const(False, dtypes.BOOL),
    "inf": Const(float("inf"), "f32"), "nan": Const(float("nan"), "f32"),
}
_COMPARISON_PREC = INFIX["lt"][1]

# }}}


# {{{ line parser

class _LineParser(LoopAnnotationParser):
    """Recursive descent over the tokens of one line."""

    def __init__(self, text: str, line: int, offset: int = 0) -> None:
        self.line = line
        self.tokens = tokenize(text, line, offset)
        self.pos = 0

    # {{{ token helpers

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.peek()
        if tok.kind != "end":
            self.pos += 1
        return tok

    def at(self, text: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind in ("op", "name") and tok.text == text

    def error(self, message: str, tok: Token | None = None) -> ParseError:
        tok = self.peek() if tok is None else tok
        return ParseError(self.line, tok.column, message)

    def expected(self, what: str, tok: Token | None = None) -> ParseError:
        tok = self.peek() if tok is None else tok
        return self.error(f"expected {what}, found {tok.describe()}", tok)

    def expect(self, text: str, context: str = "") -> Token:
        if not self.at(text):
            raise self.expected(f"'{text}'" + (f" {context}" if context else ""))
        return self.next()

    def expect_name(self, what: str) -> str:
        if self.peek().kind != "name":
            raise self.expected(what)
        return self.next().text

    def expect_int(self, what: str) -> int:
        if self.peek().kind != "int":
            raise self.expected(what)
        return int(self.next().text)

    def expect_end(self) -> None:
        if self.peek().kind != "end":
            raise self.expected("end of line")

    # }}}

    # {{{ declarations

    def dtype(self) -> str:
        tok = self.peek()
        if tok.kind != "name":
            raise self.expected("a dtype")
        if tok.text not in dtypes.ALL:
            raise self.error(f"unknown dtype {tok.text!r}; expected one of {', '.join(dtypes.ALL)}")
        return self.next().text

    def tensor_type(self) -> tuple[str, tuple[int | str, ...]]:
        """``DTYPE[SHAPE]``, each dimension a size or a size parameter."""
        dtype = self.dtype()
        self.expect("[", "after the dtype")
        shape: list[int | str] = []
        if not self.at("]"):
            shape.append(self.dimension())
            while self.at(","):
                self.next()
                shape.append(self.dimension())
        self.expect("]", "after the shape")
        return dtype, tuple(shape)

    def dimension(self) -> int | str:
        tok = self.peek()
        return self.expect_name("a dimension size") if tok.kind == "name" else self.expect_int("a dimension size")

    def tensor_decl(self, role: str, storage: str = "global") -> TensorDecl:
        """``NAME: DTYPE[SHAPE]``."""
        name = self.expect_name("a tensor name")
        self.expect(":", "after the tensor name")
        dtype, shape = self.tensor_type()
        return TensorDecl(name, dtype, shape, role, storage)

    def bounded(self, decl: TensorDecl) -> TensorDecl:
        if not self.at(">="):
            return decl
        self.next()
        bound = self.number()
        if bound is None:
            raise self.expected(f"a number after '>=' (a lower bound of {decl.name}'s values)")
        return replace(decl, at_least=float(bound.value))

    def params(self, role: str) -> list[TensorDecl]:
        """``(NAME: TYPE [>= NUMBER], ...)``, possibly empty (the bound: a fact about an input)."""
        self.expect("(")
        decls: list[TensorDecl] = []
        if not self.at(")"):
            decls.append(self.bounded(self.tensor_decl(role)))
            while self.at(","):
                self.next()
                decls.append(self.bounded(self.tensor_decl(role)))
        self.expect(")", f"after the {role}s")
        return decls

    def header(self) -> tuple[str, list[str], list[TensorDecl]]:
        """``program NAME[SIZES](INPUTS) -> (OUTPUTS)``, the size parameters optional."""
        if not self.at("program"):
            raise self.expected("the header 'program NAME(...) -> (...)'")
        self.next()
        name = self.expect_name("a program name")
        sizes: list[str] = []
        self.defs: list[tuple[str, Expr]] = []
        if self.at("["):
            self.next()
            while True:
                sizes.append(self.expect_name("a size parameter"))
                if self.at("="):  # a derived size: an expression of the earlier ones
                    self.next()
                    self.defs.append((sizes[-1], self.expr()))
                if not self.at(","):
                    break
                self.next()
            self.expect("]", "after the size parameters")
        inputs = self.params("input")
        self.expect("->", "between inputs and outputs")
        outputs = self.params("output")
        self.expect_end()
        return name, sizes, inputs + outputs

    # }}}

    # {{{ body lines

    def loop_items(self) -> list[Loop]:
        """``IT in LO:HI KIND[ tile N][ @MAPPING], ...`` after ``for``; loops with empty bodies."""
        items = [self.loop_item()]
        while self.at(","):
            self.next()
            items.append(self.loop_item())
        self.expect_end()
        return items

    def loop_item(self) -> Loop:
        iterator = self.expect_name("a loop iterator")
        self.expect("in", "after the loop iterator")
        lower = self.expr()
        self.expect(":", "between the loop bounds")
        upper = self.expr()
        tok = self.peek()
        if tok.kind != "name":
            raise self.expected(f"a loop kind ({', '.join(LOOP_KINDS)})")
        if tok.text not in LOOP_KINDS:
            raise self.error(f"unknown loop kind {tok.text!r}; expected one of {', '.join(LOOP_KINDS)}")
        kind = self.next().text
        tile = None
        if self.at("tile"):
            self.next()
            tile = self.expect_int("a tile size")
        mapping = None
        if self.at("@"):
            self.next()
            tok = self.peek()
            if tok.kind != "name":
                raise self.expected(f"a mapping ({', '.join(MAPPINGS)}) after '@'")
            if tok.text not in MAPPINGS:
                raise self.error(f"unknown mapping {tok.text!r}; expected one of {', '.join(MAPPINGS)}")
            mapping = self.next().text
        launch = None
        if self.at("launch"):
            self.next()
            for word in ("heaviest", "-", "first"):  # the one launch order there is
                self.expect(word, "in 'launch heaviest-first group G'")
            self.expect("group", "after 'launch heaviest-first'")
            launch = HeaviestFirst(self.expect_int("the number of interleaved outer grid indices"))
        state = self.online_state() if self.at("state") else None
        superseded = self.bracketed("superseded accumulators", lambda: self.expect_name("an accumulator")) \
            if self.at("superseded") else []
        ranges = self.bracketed("tile ranges", self.tile_range) if self.at("tiles") else []
        bounds = self.bracketed("tile bounds", self.tile_bound) if self.at("bounds") else []
        tile_test = self.tile_test() if self.at("test") else None
        if not (self.at(",") or self.peek().kind == "end"):
            what = "',' or end of line"
            if tile is None and mapping is None:
                what = "'tile', '@', " + what
            elif mapping is None:
                what = "'@', " + what
            raise self.expected(what + " after the loop")
        return Loop(iterator, lower, upper, kind, (), tile, mapping, tuple(ranges), tuple(bounds), launch, state,
                    tuple(superseded), tile_test)

    def stmt(self) -> Stmt:
        """``NAME: TENSOR[INDICES] OP EXPR[ then * C][ rescale EXPR][ as dot over IT][ as nan fixup | as given | as library OP]``."""
        name = self.expect_name("a statement name")
        self.expect(":", "after the statement name")
        tok = self.peek()
        if not (tok.kind == "name" and self.at("[", 1)):
            raise self.expected("a target 'tensor[indices]'")
        target = self.load()
        tok = self.peek()
        if tok.kind == "combiner" or (tok.kind == "op" and tok.text in ASSIGN_OPS):
            op = self.next().text
        else:
            raise self.expected(f"an assignment operator ({', '.join(ASSIGN_OPS)})")
        value = self.expr()
        fold_scale = self.fold_scale() if self.at("then") else None
        scale = None
        if self.at("rescale"):
            self.next()
            scale = self.expr()
        dot, tag = None, None
        if self.at("as") and self.at("dot", 1):
            self.next()
            self.next()
            self.expect("over", "in 'as dot over ITERATOR'")
            dot = self.expect_name("the reduced iterator of the matrix product")
        if self.at("as") and self.at("given", 1):
            self.next()
            self.next()
            tag = Given()
        elif self.at("as") and self.at("library", 1):
            self.next()
            self.next()
            tag = LibraryCall(self.expect_name("the library operation ('matmul')"))
        elif self.at("as"):
            self.next()
            self.expect("nan", "after 'as' (a statement is marked 'as dot over ITERATOR', 'as nan fixup', "
                               "'as given' or 'as library OP')")
            self.expect("fixup", "in 'as nan fixup'")
            tag = NanFixup()
        if self.peek().kind != "end":
            missing = [w for w, v in (("'then *'", fold_scale), ("'rescale'", scale), ("'as dot over'", dot),
                                      ("'as nan fixup', 'as given' or 'as library'", tag)) if v is None]
            raise self.expected(", ".join(missing + ["end of line"]))
        return Stmt(name, target, op, value, scale, dot, fold_scale, tag)

    def fold_scale(self) -> Const:
        """``then * C``: the constant a reduction's folds are multiplied by."""
        self.next()
        self.expect("*", "after 'then' (a reduction's folds are scaled by 'then * CONSTANT')")
        tok = self.peek()
        c = self.unary()
        if not isinstance(c, Const):
            raise self.error("expected a constant after 'then *'", tok)
        return c

    # }}}

    # {{{ expressions

    def build(self, tok: Token, op: str, *args: Expr) -> Expr:
        """``call(op, *args)``, reporting builder errors at ``tok``."""
        try:
            return call(op, *args)
        except ValueError as exc:
            raise self.error(str(exc), tok) from None

    def expr(self, min_prec: int = 1) -> Expr:
        """An expression whose binary operators bind at least as tightly as ``min_prec``."""
        left = self.unary()
        while True:
            tok = self.peek()
            entry = _INFIX_BY_SYMBOL.get(tok.text) if tok.kind == "op" else None
            if entry is None or entry[1] < min_prec:
                return left
            op, prec = entry
            self.next()
            right = self.expr(prec + 1)
            left = self.build(tok, op, left, right)
            if prec == _COMPARISON_PREC:
                after = self.peek()
                if after.kind == "op" and _INFIX_BY_SYMBOL.get(after.text, ("", 0))[1] == prec:
                    raise self.error(f"comparisons cannot be chained; found {after.describe()} after "
                                     f"a comparison (parenthesize one of them)", after)

    def unary(self) -> Expr:
        tok = self.peek()
        if tok.kind == "op" and tok.text in _PREFIX_BY_SYMBOL:
            self.next()
            op = _PREFIX_BY_SYMBOL[tok.text]
            literal = self.number()
            if op == "neg" and literal is not None:
                return Const(-literal.value, literal.dtype)  # part of the literal: -0.5, -inf
            operand = self.unary() if literal is None else literal
            if op == "neg" and isinstance(operand, Const):
                # The builder would fold this into a literal, so the printer's input was built
                # directly: -f16(0.5), --2.
                return Call(op, (operand,))
            return self.build(tok, op, operand)
        return self.atom()

    def number(self) -> Const | None:
        """A number literal (``2``, ``0.5``, ``1e-05``, ``inf``, ``nan``) if one comes next."""
        tok = self.peek()
        if tok.kind == "int":
            self.next()
            return Const(int(tok.text), "i64")
        if tok.kind == "float":
            self.next()
            return Const(float(tok.text), "f32")
        if (tok.kind == "name" and tok.text in ("inf", "nan")
                and not (self.at("[", 1) or self.at("(", 1))):
            self.next()
            return _NAMED_LITERALS[tok.text]
        return None

    def atom(self) -> Expr:
        literal = self.number()
        if literal is not None:
            return literal
        tok = self.peek()
        if self.at("("):
            self.next()
            inner = self.expr()
            self.expect(")", "to close the parenthesis")
            return inner
        if tok.kind != "name":
            raise self.expected("an expression")
        if self.at("[", 1):
            return self.load()
        if self.at("(", 1):
            return self.func_call()
        self.next()
        if tok.text in _NAMED_LITERALS:
            return _NAMED_LITERALS[tok.text]
        return Iter(tok.text)

    def load_expr(self, what: str) -> Load:
        tok = self.peek()
        if not (tok.kind == "name" and self.at("[", 1)):
            raise self.expected(what)
        return self.load()

    def load(self) -> Load:
        """``NAME[INDEX, ...]``, possibly with no indices."""
        name = self.next().text
        self.expect("[")
        indices: list[Expr] = []
        if not self.at("]"):
            indices.append(self.expr())
            while self.at(","):
                self.next()
                indices.append(self.expr())
        self.expect("]", "after index list")
        return Load(name, tuple(indices))

    def func_call(self) -> Expr:
        """``FN(ARG, ...)`` where FN is a function of the operator table or a dtype (a cast)."""
        tok = self.next()
        fn = tok.text
        if fn not in _FUNCTIONS:
            if fn in INFIX or fn in PREFIX:
                sym = INFIX[fn][0] if fn in INFIX else PREFIX[fn][0]
                raise self.error(f"unknown function {fn!r}; write the operator '{sym}' instead", tok)
            raise self.error(f"unknown function {fn!r}; expected one of {', '.join(_FUNCTIONS)}", tok)
        self.expect("(")
        args: list[Expr] = []
        if not self.at(")"):
            args.append(self.expr())
            while self.at(","):
                self.next()
                args.append(self.expr())
        self.expect(")", "after the arguments")
        arity = ARITY[fn]
        if len(args) != arity:
            what = f"cast to {fn}" if fn in CASTS else f"function {fn!r}"
            plural = "argument" if arity == 1 else "arguments"
            raise self.error(f"{what} takes {arity} {plural}, found {len(args)}", tok)
        return self.build(tok, fn, *args)

    # }}}

# }}}


# {{{ program structure

@dataclass(frozen=True)
class _Line:
    number: int  # 1-based
    depth: int
    text: str  # without the indentation
    indent: int  # spaces

    def parser(self) -> _LineParser:
        return _LineParser(self.text, self.number, self.indent)


def _split_lines(text: str) -> list[_Line]:
    """Non-blank, non-comment lines with their indentation depth."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        content = raw.rstrip()
        if not content or content.lstrip().startswith(("#", "//")):
            continue
        stripped = content.lstrip(" ")
        indent = len(content) - len(stripped)
        if stripped[0] == "\t":
            raise ParseError(number, indent + 1, "expected spaces for indentation, found tab")
        if indent % INDENT:
            raise ParseError(number, indent + 1, f"expected indentation by a multiple of {INDENT} spaces, "
                                                 f"found {indent} spaces")
        out.append(_Line(number, indent // INDENT, stripped, indent))
    return out


class _ProgramParser:
    def __init__(self, text: str) -> None:
        self.lines = _split_lines(text)
        self.pos = 0

    def peek(self) -> _Line | None:
        return self.lines[self.pos] if self.pos < len(self.lines) else None

    def parse(self) -> Program:
        head = self.peek()
        if head is None:
            raise ParseError(1, 1, "expected the header 'program NAME(...) -> (...)', found end of input")
        if head.depth != 0:
            raise ParseError(head.number, head.indent + 1, "expected the header 'program NAME(...) -> (...)' "
                                                           f"without indentation, found {head.indent} spaces")
        header = head.parser()
        name, sizes, tensors = header.header()
        self.pos += 1
        tensors += self.declarations()
        body = self.block(1)
        line = self.peek()
        if line is not None:  # a line at depth 0
            first = line.parser().peek()
            raise ParseError(line.number, 1, f"expected a body line indented by {INDENT} spaces or end of "
                                             f"input, found {first.describe()}")
        return Program(name, tuple(tensors), tuple(body), params=tuple(sizes), defs=tuple(header.defs))

    def declarations(self) -> list[TensorDecl]:
        """``buffer NAME: TYPE`` and ``local NAME: TYPE`` lines right after the header."""
        decls = []
        while (line := self.peek()) is not None and line.depth == 1 and _is_declaration(line):
            p = line.parser()
            storage = "local" if p.next().text == "local" else "global"
            decls.append(p.tensor_decl("temp", storage))
            p.expect_end()
            self.pos += 1
        return decls

    def block(self, depth: int) -> list[Node]:
        """The lines at ``depth`` up to the first line that is less indented."""
        nodes: list[Node] = []
        while (line := self.peek()) is not None and line.depth >= depth:
            if line.depth > depth:
                raise ParseError(line.number, line.indent + 1,
                                 f"unexpected indentation: expected {depth * INDENT} spaces, found "
                                 f"{line.indent} (only 'for' and 'if' lines open a block)")
            self.pos += 1
            nodes.append(self.node(line))
        return nodes

    def nested(self, opener: _Line) -> list[Node]:
        """The block below a ``for`` or ``if`` line.

        A block may be empty: the printer prints a loop or guard without a body as its line alone.
        """
        line = self.peek()
        if line is None or line.depth <= opener.depth:
            return []
        return self.block(opener.depth + 1)

    def node(self, line: _Line) -> Node:
        p = line.parser()
        first, second = p.peek(), p.peek(1)
        if first.kind == "name" and second.text == ":" and second.kind == "op":
            return p.stmt()
        if p.at("for"):
            p.next()
            loops = p.loop_items()
            body = tuple(self.nested(line))
            for loop in reversed(loops):
                body = (dataclasses.replace(loop, body=body),)
            return body[0]
        if p.at("if"):
            p.next()
            cond = p.expr()
            p.expect_end()
            return Guard(cond, tuple(self.nested(line)))
        if _is_declaration(line):
            raise p.error(f"tensor declarations must come right after the header, found {first.text!r}")
        raise p.expected("a statement 'NAME: tensor[indices] OP expr', 'for' or 'if'")


def _is_declaration(line: _Line) -> bool:
    p = line.parser()
    return p.peek().text in ("buffer", "local") and p.peek().kind == "name" and p.peek(1).kind == "name"

# }}}


def parse_program(text: str) -> Program:
    """Parse the printer's text form of a program (see the module docstring)."""
    return _ProgramParser(text).parse()


def parse_expr(text: str) -> Expr:
    """Parse a single expression, e.g. ``exp(s[i0,i1] - 1.5) * f16(0.5)``."""
    p = _LineParser(text.strip(), 1, len(text) - len(text.lstrip()))
    e = p.expr()
    p.expect_end()
    return e
