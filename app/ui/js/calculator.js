// The calculator tool the page offers the model and runs itself: a port of
// app/profiles/calculator.py, with the same definition (its JSON, byte for byte: the model learnt the
// tool from it) and the same grammar, answers and error strings. tests/ui/test_calculator.py holds
// the two equal: the definition by text, the evaluator on a list of expressions run in the browser.
//
//   expression := term (("+" | "-") term)*
//   term       := factor (("*" | "/") factor)*
//   factor     := "-" factor | number | "(" expression ")"
//
// Integers of any size (BigInt); `/` rounds down, and a whole expression that is a division answers
// with its remainder ("98765/43" → "2296 remainder 37"); what cannot be evaluated answers "error: …".

export const CALCULATOR_TOOL = {"type": "function", "function": {"name": "calculator", "description": "Evaluate an integer arithmetic expression: + - * and / (integer division with remainder).", "parameters": {"type": "object", "properties": {"expression": {"type": "string", "description": "For example 4821*375"}}, "required": ["expression"]}}};

export const MAX_LENGTH = 200;
export const MAX_DEPTH = 32;
const DIGITS = "0123456789";
const SPACES = " \t\r\n";
const OPERATORS = "+-*/()";

class CalculatorError extends Error {}

/** The calculator's answer to `expression`: "1807875", "2296 remainder 37" or "error: …". */
export function evaluate(expression) {
  let value;
  try {
    value = new Parser(tokens(expression)).parse();
  } catch (err) {
    if (err instanceof CalculatorError) return `error: ${err.message}`;
    throw err;
  }
  return value.remainder === null ? String(value.number) : `${value.number} remainder ${value.remainder}`;
}

/** The `tool` message's content for one call, from the call's JSON arguments (a string). */
export function answerCall(argumentsText) {
  let parsed = null;
  try {
    parsed = JSON.parse(argumentsText);
  } catch {
    // not JSON: answered below, like any other non-object
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    return "error: the arguments are not a JSON object";
  }
  const expression = Object.hasOwn(parsed, "expression") ? parsed.expression : undefined;
  if (typeof expression !== "string") return 'error: "expression" is not a string';
  return evaluate(expression);
}

/** Numbers (runs of ASCII digits) and operators; anything else is an error. */
function tokens(text) {
  const chars = Array.from(text); // code points, as Python counts them
  if (chars.length > MAX_LENGTH) throw new CalculatorError(`longer than ${MAX_LENGTH} characters`);
  const found = [];
  let at = 0;
  while (at < chars.length) {
    const char = chars[at];
    let end = at + 1;
    if (DIGITS.includes(char)) {
      while (end < chars.length && DIGITS.includes(chars[end])) end += 1;
      found.push(chars.slice(at, end).join(""));
    } else if (OPERATORS.includes(char)) {
      found.push(char);
    } else if (!SPACES.includes(char)) {
      throw new CalculatorError(`unexpected "${char}"`);
    }
    at = end;
  }
  if (!found.length) throw new CalculatorError("empty expression");
  return found;
}

/** A number, and its remainder when it is the quotient of the last operation, a `/`. */
const value = (number, remainder = null) => ({ number, remainder });

/** Floor division and its remainder, as Python's divmod (BigInt `/` truncates toward zero). */
function divmod(a, b) {
  let quotient = a / b;
  let remainder = a % b;
  if (remainder !== 0n && (remainder < 0n) !== (b < 0n)) {
    quotient -= 1n;
    remainder += b;
  }
  return value(quotient, remainder);
}

class Parser {
  constructor(tokens) {
    this.tokens = tokens;
    this.at = 0;
    this.depth = 0;
  }

  parse() {
    const result = this.expression();
    if (this.at < this.tokens.length) throw new CalculatorError(`unexpected "${this.tokens[this.at]}"`);
    return result;
  }

  peek() {
    return this.at < this.tokens.length ? this.tokens[this.at] : null;
  }

  take() {
    const token = this.peek();
    if (token === null) throw new CalculatorError("unexpected end");
    this.at += 1;
    return token;
  }

  expression() {
    let result = this.term();
    for (let operator = this.peek(); operator === "+" || operator === "-"; operator = this.peek()) {
      this.at += 1;
      const right = this.term().number;
      result = value(operator === "+" ? result.number + right : result.number - right);
    }
    return result;
  }

  term() {
    let result = this.factor();
    for (let operator = this.peek(); operator === "*" || operator === "/"; operator = this.peek()) {
      this.at += 1;
      const right = this.factor().number;
      if (operator === "*") result = value(result.number * right);
      else if (right === 0n) throw new CalculatorError("division by zero");
      else result = divmod(result.number, right);
    }
    return result;
  }

  factor() {
    const token = this.take();
    if (DIGITS.includes(token[0])) return value(BigInt(token));
    if (token !== "-" && token !== "(") throw new CalculatorError(`unexpected "${token}"`);
    this.depth += 1;
    if (this.depth > MAX_DEPTH) throw new CalculatorError("too deeply nested");
    let result;
    if (token === "-") {
      result = value(-this.factor().number);
    } else {
      result = this.expression();
      if (this.take() !== ")") throw new CalculatorError(`unexpected "${this.tokens[this.at - 1]}"`);
    }
    this.depth -= 1;
    return result;
  }
}
