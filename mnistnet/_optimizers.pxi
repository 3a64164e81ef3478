# Optimizer updates: SGD, momentum, Adam, AdamW and RMSprop (included by _kernels.pyx; declared
# in _kernels.pxd). Keras 3's rules, stated in mnistnet/reference.py with their NumPy twins.
# Elementwise, so any split of a block across threads gives the same bits. Every one keeps an
# element whose new weight would be NaN or Inf at its old value and returns False (the epoch
# then stops).

cdef inline bint keep_finite(float* w, float new) noexcept nogil:
    # w = new if new is finite; whether it was. (v - v is 0 for finite v, NaN otherwise.)
    if new - new == 0:
        w[0] = new
        return True
    return False


cdef bint sgd_update(float* params, const float* grads, float learning_rate,
                     Py_ssize_t N) noexcept nogil:
    # params -= learning_rate * grads (compiled per SIMD path in csrc/).
    return mn_sgd_update(params, grads, learning_rate, N)


cdef bint momentum_update(float* params, const float* grads, float* velocity,
                          float learning_rate, float momentum, bint nesterov,
                          Py_ssize_t N) noexcept nogil:
    # velocity = momentum * velocity - lr * g; w += velocity
    # (Nesterov: w += momentum * velocity - lr * g).
    cdef Py_ssize_t i
    cdef bint finite = True
    cdef float step
    for i in range(N):
        velocity[i] = momentum * velocity[i] - learning_rate * grads[i]
        step = momentum * velocity[i] - learning_rate * grads[i] if nesterov else velocity[i]
        finite &= keep_finite(&params[i], params[i] + step)
    return finite


cdef inline float adam_alpha(float learning_rate, double beta_1, double beta_2,
                             long long step) noexcept nogil:
    # lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), in double, rounded once to float.
    return <float>(<double>learning_rate * sqrt(1.0 - pow(beta_2, <double>step))
                   / (1.0 - pow(beta_1, <double>step)))


cdef bint adam_step(float* params, const float* grads, float* m, float* v, float alpha,
                    float beta_1, float beta_2, float epsilon, bint decoupled,
                    float weight_decay, float learning_rate, Py_ssize_t N) noexcept nogil:
    # m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2); w -= (m alpha) / (sqrt(v) + eps), from
    # w decayed first if decoupled (AdamW: w - (w * weight_decay) * lr). One update of each
    # weight: where its result is NaN or Inf, the weight keeps its old value, decay included.
    cdef Py_ssize_t i
    cdef bint finite = True
    cdef float one = 1, g, w
    cdef float c1 = one - beta_1, c2 = one - beta_2
    for i in range(N):
        g = grads[i]
        m[i] = m[i] + (g - m[i]) * c1
        v[i] = v[i] + (g * g - v[i]) * c2
        w = params[i]
        if decoupled:  # loop-invariant: the compiler unswitches it
            w = w - (w * weight_decay) * learning_rate
        finite &= keep_finite(&params[i], w - (m[i] * alpha) / (sqrtf(v[i]) + epsilon))
    return finite


cdef bint adam_update(float* params, const float* grads, float* m, float* v,
                      float learning_rate, double beta_1, double beta_2, float epsilon,
                      long long step, Py_ssize_t N) noexcept nogil:
    # The betas in double: Adam's step size takes their powers (the update, their floats).
    return adam_step(params, grads, m, v, adam_alpha(learning_rate, beta_1, beta_2, step),
                     <float>beta_1, <float>beta_2, epsilon, False, 0, learning_rate, N)


cdef bint adamw_update(float* params, const float* grads, float* m, float* v,
                       float learning_rate, double beta_1, double beta_2, float epsilon,
                       long long step, float weight_decay, Py_ssize_t N) noexcept nogil:
    # Decoupled weight decay (w -= (w * weight_decay) * lr), then Adam's step, as one step:
    # rejected whole where it would make a weight NaN or Inf.
    return adam_step(params, grads, m, v, adam_alpha(learning_rate, beta_1, beta_2, step),
                     <float>beta_1, <float>beta_2, epsilon, True, weight_decay, learning_rate,
                     N)


cdef bint rmsprop_update(float* params, const float* grads, float* velocity, float* average,
                         float* moment, float learning_rate, float rho, float momentum,
                         float epsilon, Py_ssize_t N) noexcept nogil:
    # velocity = rho v + (1 - rho) g^2; step = lr g / sqrt(velocity [- average^2] + eps),
    # average (centered) = rho a + (1 - rho) g; with momentum, moment = momentum m + step and
    # the weight moves by moment.
    cdef Py_ssize_t i
    cdef bint finite = True
    cdef float one = 1, g, den, step
    cdef float rest = one - rho
    for i in range(N):
        g = grads[i]
        velocity[i] = rho * velocity[i] + rest * (g * g)
        if average != NULL:
            average[i] = rho * average[i] + rest * g
            den = velocity[i] - average[i] * average[i] + epsilon
        else:
            den = velocity[i] + epsilon
        step = (learning_rate * g) / sqrtf(den)
        if moment != NULL:
            moment[i] = momentum * moment[i] + step
            step = moment[i]
        finite &= keep_finite(&params[i], params[i] - step)
    return finite


cdef inline float* slot(const Net* net, Py_ssize_t i, Py_ssize_t offset) noexcept nogil:
    # Element `offset` of the optimizer's state block i.
    return net.state + i * net.n_params + offset


cdef bint update_block(const Net* net, const Step* s, Py_ssize_t offset,
                       Py_ssize_t n) noexcept nogil:
    """The net's optimizer on params[offset: offset + n] from the same elements of grads
    and of each slot of optimizer state (RMSprop's: the average of squares, then the momentum
    if any, then the centered average if centered; reference.apply_update)."""
    cdef const OptimizerSettings* o = &net.opt
    cdef float* w = net.params + offset
    cdef const float* g = net.grads + offset
    cdef float* moment = NULL
    cdef float* average = NULL
    if o.code == OPT_SGD:
        return sgd_update(w, g, s.learning_rate, n)
    if o.code == OPT_MOMENTUM:
        return momentum_update(w, g, slot(net, 0, offset), s.learning_rate, <float>o.momentum,
                               o.nesterov, n)
    if o.code == OPT_RMSPROP:
        if o.momentum > 0:
            moment = slot(net, 1, offset)
        if o.centered:
            average = slot(net, 2 if o.momentum > 0 else 1, offset)
        return rmsprop_update(w, g, slot(net, 0, offset), average, moment, s.learning_rate,
                              <float>o.rho, <float>o.momentum, <float>o.epsilon, n)
    if o.code == OPT_ADAMW:
        return adamw_update(w, g, slot(net, 0, offset), slot(net, 1, offset), s.learning_rate,
                            o.beta_1, o.beta_2, <float>o.epsilon, s.t, <float>o.weight_decay,
                            n)
    return adam_update(w, g, slot(net, 0, offset), slot(net, 1, offset), s.learning_rate,
                       o.beta_1, o.beta_2, <float>o.epsilon, s.t, n)
