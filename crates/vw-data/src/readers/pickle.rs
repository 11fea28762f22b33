//! A minimal, safe pickle reader: enough of protocols 2–5 to read the plain data (dicts, lists,
//! tuples, strings, numbers) that datasets store in object `.npy` files, such as CALVIN's
//! `auto_lang_ann.npy`. Nothing is ever executed: a class reference (`GLOBAL`) and its constructor
//! call (`REDUCE`/`NEWOBJ`/`BUILD`) become an opaque [`Value::Object`] that keeps its arguments and state,
//! so a numpy array inside the data is still reachable (see [`Value::ndarray_items`]).
//!
//! Limits: the memo stores copies, so an object that is mutated after being memoized and then referenced
//! twice is seen in its memoized state (plain-data pickles do not do this); protocol 0/1 text opcodes
//! other than `GLOBAL` are not supported; numeric numpy arrays stay opaque (their raw bytes are kept).

use crate::{Error, Result};
use std::collections::HashMap;

/// A decoded Python value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// `int` (that fits in i64).
    Int(i64),
    /// `float`.
    Float(f64),
    /// `str`.
    Str(String),
    /// `bytes` (or a protocol-2 byte string).
    Bytes(Vec<u8>),
    /// `list`.
    List(Vec<Value>),
    /// `tuple`.
    Tuple(Vec<Value>),
    /// `dict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// `set` / `frozenset`.
    Set(Vec<Value>),
    /// A class or function reference `module.name` (never imported).
    Global(String, String),
    /// An object built by calling `callable(*args)` and then setting `state`; nothing is run.
    Object {
        /// What would have been called.
        callable: Box<Value>,
        /// Its arguments.
        args: Box<Value>,
        /// The state passed to `__setstate__`, if any.
        state: Option<Box<Value>>,
    },
}

impl Value {
    /// Looks up a string key in a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find(|(k, _)| matches!(k, Value::Str(s) if s == key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Elements of a list or tuple.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// The value as an integer.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// For a pickled numpy object array (`numpy.core.multiarray._reconstruct` + state
    /// `(version, shape, dtype, fortran, items)`), its items — e.g. the dict inside `np.save(path, dict)`.
    pub fn ndarray_items(&self) -> Option<&[Value]> {
        let Value::Object { callable, state: Some(state), .. } = self else { return None };
        let Value::Global(module, name) = callable.as_ref() else { return None };
        if !module.starts_with("numpy") || name != "_reconstruct" {
            return None;
        }
        state.as_seq()?.get(4)?.as_seq()
    }
}

/// Caps that keep hostile input from exhausting memory.
const MAX_STACK: usize = 1 << 20;

/// Parses a pickle; `what` names it in errors.
pub fn parse_pickle(bytes: &[u8], what: &str) -> Result<Value> {
    Unpickler { buf: bytes, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
        .run()
        .map_err(|e| Error::malformed(what, format!("pickle: {e}")))
}

struct Unpickler<'a> {
    buf: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

type R<T> = std::result::Result<T, String>;

impl<'a> Unpickler<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or("truncated")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    fn len(&mut self, n: u64) -> R<&'a [u8]> {
        let n = usize::try_from(n).map_err(|_| "length overflow")?;
        self.take(n)
    }

    fn line(&mut self) -> R<String> {
        let rest = &self.buf[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("unterminated line")?;
        self.pos += end + 1;
        String::from_utf8(rest[..end].to_vec()).map_err(|_| "line is not UTF-8".into())
    }

    fn push(&mut self, v: Value) -> R<()> {
        if self.stack.len() >= MAX_STACK {
            return Err("stack too deep".into());
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> R<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("pop across a mark".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let m = self.marks.pop().ok_or("no mark")?;
        if m > self.stack.len() {
            return Err("mark beyond stack".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn top(&mut self) -> R<&mut Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("no object above the mark".into());
        }
        self.stack.last_mut().ok_or_else(|| "stack underflow".into())
    }

    fn str(bytes: &[u8]) -> R<Value> {
        String::from_utf8(bytes.to_vec()).map(Value::Str).map_err(|_| "string is not UTF-8".into())
    }

    fn long(bytes: &[u8]) -> R<Value> {
        if bytes.len() > 8 {
            return Err(format!("integer of {} bytes does not fit i64", bytes.len()));
        }
        if bytes.is_empty() {
            return Ok(Value::Int(0));
        }
        let neg = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut b = [if neg { 0xff } else { 0 }; 8];
        b[..bytes.len()].copy_from_slice(bytes);
        Ok(Value::Int(i64::from_le_bytes(b)))
    }

    fn extend_list(&mut self, items: Vec<Value>) -> R<()> {
        match self.top()? {
            Value::List(v) | Value::Set(v) => {
                v.extend(items);
                Ok(())
            }
            // Appending to an opaque object (a list subclass): keep the items as its state.
            Value::Object { state, .. } => {
                let s = state.get_or_insert_with(|| Box::new(Value::List(Vec::new())));
                if let Value::List(v) = s.as_mut() {
                    v.extend(items);
                }
                Ok(())
            }
            _ => Err("append to a non-list".into()),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> R<()> {
        if !items.len().is_multiple_of(2) {
            return Err("odd number of dict items".into());
        }
        let Value::Dict(d) = self.top()? else { return Err("setitem on a non-dict".into()) };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match d.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => d.push((k, v)),
            }
        }
        Ok(())
    }

    fn run(mut self) -> R<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("unsupported protocol {proto}"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a size hint only
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))?
                }
                0x8a => {
                    let n = self.u8()? as u64;
                    let b = self.len(n)?;
                    self.push(Self::long(b)?)?
                }
                0x8b => {
                    let n = self.u32()? as u64;
                    let b = self.len(n)?;
                    self.push(Self::long(b)?)?
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.push(Value::Float(f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])))?
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    let s = Self::str(self.len(n)?)?;
                    self.push(s)?
                }
                0x8c => {
                    let n = self.u8()? as u64;
                    let s = Self::str(self.len(n)?)?;
                    self.push(s)?
                }
                0x8d => {
                    let n = self.u64()?;
                    let s = Self::str(self.len(n)?)?;
                    self.push(s)?
                }
                b'B' | b'T' => {
                    let n = self.u32()? as u64;
                    let b = self.len(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b'C' | b'U' => {
                    let n = self.u8()? as u64;
                    let b = self.len(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                0x8e => {
                    let n = self.u64()?;
                    let b = self.len(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b']' => self.push(Value::List(Vec::new()))?,
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b')' => self.push(Value::Tuple(Vec::new()))?,
                0x8f => self.push(Value::Set(Vec::new()))?,
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err("too many marks".into());
                    }
                    self.marks.push(self.stack.len())
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v])?
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items))?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items))?
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::Set(items))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new()))?;
                    self.set_items(items)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(items))?
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo.get(&i).cloned().ok_or(format!("memo {i} missing"))?;
                    self.push(v)?
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo.get(&i).cloned().ok_or(format!("memo {i} missing"))?;
                    self.push(v)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(module, name))?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n))?,
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.push(Value::Object { callable: Box::new(callable), args: Box::new(args), state: None })?
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = Value::Tuple(vec![args, kwargs]);
                    self.push(Value::Object { callable: Box::new(callable), args: Box::new(args), state: None })?
                }
                b'b' => {
                    let st = self.pop()?;
                    match self.top()? {
                        Value::Object { state, .. } => *state = Some(Box::new(st)),
                        _ => return Err("BUILD on a non-object".into()),
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?
                }
                other => return Err(format!("unsupported opcode 0x{other:02x} at byte {}", self.pos - 1)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_protocol_3_dict() {
        // pickle.dumps({'ann': ['open the drawer', 'lift'], 'indx': [(0, 64), (70, 134)], 'x': 1.5, 'n': None}, protocol=3)
        let bytes: &[u8] = b"\x80\x03}q\x00(X\x03\x00\x00\x00annq\x01]q\x02(X\x0f\x00\x00\x00open the drawerq\x03X\x04\x00\x00\x00liftq\x04eX\x04\x00\x00\x00indxq\x05]q\x06(K\x00K@\x86q\x07KFK\x86\x86q\x08eX\x01\x00\x00\x00xq\tG?\xf8\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00nq\nNu.";
        let v = parse_pickle(bytes, "t").unwrap();
        let ann: Vec<&str> = v.get("ann").unwrap().as_seq().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(ann, vec!["open the drawer", "lift"]);
        let indx = v.get("indx").unwrap().as_seq().unwrap();
        assert_eq!(indx[1], Value::Tuple(vec![Value::Int(70), Value::Int(134)]));
        assert_eq!(v.get("x"), Some(&Value::Float(1.5)));
        assert_eq!(v.get("n"), Some(&Value::None));
    }

    #[test]
    fn numpy_object_array_exposes_its_items() {
        // What numpy 2.4's np.save(f, np.array({'a': 1}, dtype=object), allow_pickle=True) writes after the header.
        let bytes: &[u8] = b"\x80\x04\x95\x8f\x00\x00\x00\x00\x00\x00\x00\x8c\x16numpy._core.multiarray\x94\x8c\x0c_reconstruct\x94\x93\x94\x8c\x05numpy\x94\x8c\x07ndarray\x94\x93\x94K\x00\x85\x94C\x01b\x94\x87\x94R\x94(K\x01)h\x03\x8c\x05dtype\x94\x93\x94\x8c\x02O8\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01|\x94NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?t\x94b\x89]\x94}\x94\x8c\x01a\x94K\x01sat\x94b.";
        let v = parse_pickle(bytes, "t").unwrap();
        let items = v.ndarray_items().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].get("a"), Some(&Value::Int(1)));
    }

    #[test]
    fn malformed_pickles_are_errors() {
        let bads: [&[u8]; 8] =
            [b"", b"\x80\x03", b"\x80\x03}q\x00(", b"\x80\x03X\xff\xff\xff\x7f", b"\x80\x09N.", b"s.", b"a", b"\xff"];
        for bad in bads {
            assert!(parse_pickle(bad, "t").is_err(), "{bad:?}");
        }
    }
}
