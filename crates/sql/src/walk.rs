//! Visits every node of a parse tree. The tree's generated protobuf types
//! all implement `serde::Serialize`, so a serializer that keeps nothing
//! but what it looks for walks all of them: no node type can be missed,
//! and a function call is found wherever the grammar allows one (a
//! hand-written walker over the ~270 node types could forget one and send
//! a volatile call to a standby). It allocates only for what it finds.
//! The tree's depth is bounded by the protobuf decoder's recursion limit.

use serde::ser::{self, Serialize};

use crate::model::{FuncName, RelName};

/// What a walk over every node of a statement found.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    pub functions: Vec<FuncName>,
    pub relations: Vec<RelName>,
    /// a LockingClause anywhere (subqueries and CTEs included)
    pub locking: bool,
    /// an INSERT, UPDATE, DELETE or MERGE nested in the statement
    pub dml: bool,
}

pub(crate) fn walk(node: &impl Serialize) -> Facts {
    let mut facts = Facts::default();
    let walker = Walker {
        facts: &mut facts,
        texts: None,
    };
    if node.serialize(walker).is_err() {
        // never returned; if it were, what was found may be incomplete
        facts.dml = true;
    }
    facts
}

/// The serializer: `texts`, when set, takes every string below (the
/// parts of a function's or a relation's name).
struct Walker<'a> {
    facts: &'a mut Facts,
    texts: Option<&'a mut Vec<String>>,
}

impl Walker<'_> {
    fn child(&mut self) -> Walker<'_> {
        Walker {
            facts: &mut *self.facts,
            texts: self.texts.as_deref_mut(),
        }
    }
}

/// A struct being walked: function calls and relations keep their names.
struct StructWalker<'a> {
    walker: Walker<'a>,
    kind: Kind,
}

enum Kind {
    FuncCall(Vec<String>),
    RangeVar {
        schema: Vec<String>,
        name: Vec<String>,
    },
    Other,
}

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("parse tree walk failed")
    }
}

impl std::error::Error for Never {}

impl ser::Error for Never {
    fn custom<T: std::fmt::Display>(_: T) -> Never {
        Never
    }
}

type Done = Result<(), Never>;

macro_rules! ignore {
    ($($f:ident: $t:ty),* $(,)?) => {
        $(fn $f(self, _: $t) -> Done { Ok(()) })*
    };
}

impl<'a> ser::Serializer for Walker<'a> {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = StructWalker<'a>;
    type SerializeStructVariant = Self;

    ignore!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_f32: f32, serialize_f64: f64, serialize_char: char,
        serialize_bytes: &[u8], serialize_unit_struct: &'static str);

    fn serialize_str(self, v: &str) -> Done {
        if let Some(texts) = self.texts {
            texts.push(v.to_owned());
        }
        Ok(())
    }

    fn serialize_none(self) -> Done {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Done {
        v.serialize(self)
    }

    fn serialize_unit(self) -> Done {
        Ok(())
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Done {
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Done {
        v.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> Done {
        v.serialize(self)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Never> {
        Ok(self)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self, Never> {
        Ok(self)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Never> {
        Ok(self)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        Ok(self)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self, Never> {
        Ok(self)
    }

    fn serialize_struct(self, name: &'static str, _: usize) -> Result<StructWalker<'a>, Never> {
        let kind = match name {
            "FuncCall" => Kind::FuncCall(Vec::new()),
            "RangeVar" => Kind::RangeVar {
                schema: Vec::new(),
                name: Vec::new(),
            },
            "LockingClause" => {
                self.facts.locking = true;
                Kind::Other
            }
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                self.facts.dml = true;
                Kind::Other
            }
            _ => Kind::Other,
        };
        Ok(StructWalker { walker: self, kind })
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Never> {
        Ok(self)
    }
}

impl ser::SerializeStruct for StructWalker<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Done {
        let facts = &mut *self.walker.facts;
        let texts = match (&mut self.kind, key) {
            (Kind::FuncCall(parts), "funcname") => parts,
            (Kind::RangeVar { schema, .. }, "schemaname") => schema,
            (Kind::RangeVar { name, .. }, "relname") => name,
            _ => return v.serialize(self.walker.child()),
        };
        v.serialize(Walker {
            facts,
            texts: Some(texts),
        })
    }

    fn end(self) -> Done {
        match self.kind {
            Kind::FuncCall(mut parts) => {
                // schema.name or name (catalog.schema.name: its last two);
                // a name not read is an unknown function
                let name = parts.pop().unwrap_or_default();
                let schema = parts.pop();
                self.walker.facts.functions.push(FuncName { schema, name });
            }
            Kind::RangeVar { schema, name } => {
                self.walker.facts.relations.push(RelName {
                    schema: schema.into_iter().find(|s| !s.is_empty()),
                    name: name.concat(),
                });
            }
            Kind::Other => {}
        }
        Ok(())
    }
}

macro_rules! compound {
    ($($trait:ident: $method:ident),*) => {$(
        impl ser::$trait for Walker<'_> {
            type Ok = ();
            type Error = Never;

            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Done {
                v.serialize(self.child())
            }

            fn end(self) -> Done {
                Ok(())
            }
        }
    )*};
}

compound!(SerializeSeq: serialize_element, SerializeTuple: serialize_element,
    SerializeTupleStruct: serialize_field, SerializeTupleVariant: serialize_field);

impl ser::SerializeMap for Walker<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Done {
        k.serialize(self.child())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Done {
        v.serialize(self.child())
    }

    fn end(self) -> Done {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Walker<'_> {
    type Ok = ();
    type Error = Never;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, _: &'static str, v: &T) -> Done {
        v.serialize(self.child())
    }

    fn end(self) -> Done {
        Ok(())
    }
}
