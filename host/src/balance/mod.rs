//! Load balancing: choosing the endpoint of a destination a message goes to.
